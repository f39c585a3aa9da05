"""Drives runway-proxy with the official Runway Python SDK (`runwayml`), as a user would.

The SDK runs with its own defaults (max_retries=2, retrying 408, 409, 429 and 5xx unless
the answer says `x-should-retry`); only its polling interval is shortened so waiting for
a task takes a second instead of six. Prints one JSON line describing what happened.
"""

import json
import os
import sys

import runwayml
import runwayml.lib.polling as polling
from runwayml import RunwayML

polling.POLL_TIME = 0.4
polling.POLL_JITTER = 0.2

client = RunwayML(base_url=os.environ["RUNWAYML_BASE_URL"], api_key="sk-test-sdk")
task_args = dict(model="gen4_turbo", prompt_image="https://cdn.example.com/cat.png", ratio="1280:720")


def create(**extra):
    try:
        task = client.image_to_video.create(**task_args, **extra)
        return {"result": "created", "id": task.id, "task": task}
    except runwayml.APIStatusError as error:
        return {
            "result": "error",
            "status": error.status_code,
            "should_retry": error.response.headers.get("x-should-retry"),
            "message": str(error),
        }
    except runwayml.APIConnectionError as error:
        return {"result": "connection-error", "message": str(error)}


def public(outcome):
    return {k: v for k, v in outcome.items() if k != "task"}


scenario = sys.argv[1]
if scenario == "create-and-wait":
    created = create()
    output = created["task"].wait_for_task_output(timeout=30)
    print(json.dumps({"id": created["id"], "status": output.status, "output": output.output}))
elif scenario == "create-once":
    print(json.dumps(public(create())))
elif scenario == "idempotency-key":
    first = create(extra_headers={"Idempotency-Key": "order-1001"})
    again = create(extra_headers={"Idempotency-Key": "order-1001"})
    print(json.dumps({"first": public(first), "again": public(again)}))
elif scenario == "create-twice":
    first = create()
    again = create()
    print(json.dumps({"first": public(first), "again": public(again)}))
elif scenario == "api-surface":
    # A representative method of each kind, through the proxy: task creations on routes
    # other than image_to_video, resources that are no task, an upload, the
    # organization, and cancelling a task. Each result is read through the SDK's types.
    results = {}
    results["text_to_video"] = client.text_to_video.create(
        model="gen4.5", prompt_text="a cat", ratio="1280:720", duration=5
    ).id
    results["text_to_image"] = client.text_to_image.create(
        model="gen4_image", prompt_text="a cat", ratio="1920:1080"
    ).id
    results["sound_effect"] = client.sound_effect.create(model="seed_audio", prompt_text="rain").id
    voice = client.voices.create(
        name="My voice", from_={"type": "text", "model": "eleven_ttv_v3", "prompt": "a calm voice"}
    )
    results["voice"] = voice.id
    upload = client.uploads.create_ephemeral(file=("cat.png", b"\x89PNG\r\n\x1a\n0000", "image/png"))
    results["upload_uri"] = upload.uri
    organization = client.organization.retrieve()
    results["credit_balance"] = organization.credit_balance
    usage = client.organization.retrieve_usage()
    results["usage_results"] = len(usage.results)
    # Cancelled while it runs: the SDK reads it as CANCELLED.
    task = client.image_to_video.create(**task_args)
    client.tasks.delete(task.id)
    results["cancelled"] = task.id
    results["cancelled_status"] = client.tasks.retrieve(task.id).status
    print(json.dumps(results))
else:
    sys.exit(f"unknown scenario {scenario}")
