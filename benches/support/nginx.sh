# Shared by benches/compare-nginx.sh and benches/count-instructions.sh (sourced, not run):
# the nginx upstream both measure against, answering with CometAPI's envelope.
# Expects $work (a temporary directory) to be set.

# The feed answer of a finished task, and a submission's acceptance.
feed='{"code":200,"msg":"success","data":{"task_id":"d51c94db-f7fa-4ad3-a083-b8918686c478","status":"3","video_url":"https://cdn.example/v.mp4","point":"320","refund":"0"}}'
accepted='{"code":200,"msg":"success","data":{"task_id":"d51c94db-f7fa-4ad3-a083-b8918686c478"},"exec_time":0.41}'

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The lines every nginx config here starts with; $1 names its log and pid files.
common_nginx() {
    cat <<CONF
daemon on;
error_log $work/$1-error.log warn;
pid $work/$1.pid;
events { worker_connections 4096; }
CONF
}

# Write $work/upstream.conf: one worker on 127.0.0.1:$1, keep-alive without limit.
write_upstream_conf() {
    {
        common_nginx upstream
        echo "worker_processes 1;"
        cat <<CONF
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$1;
        default_type application/json;
        location = /runway/feed { return 200 '$feed'; }
        location /runway/pro/ { return 200 '$accepted'; }
    }
}
CONF
    } >"$work/upstream.conf"
}
