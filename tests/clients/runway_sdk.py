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
elif scenario == "every-method":
    # Every method of the SDK, each with the arguments it requires (values the stand-in
    # takes), its answer read through the SDK's types. Prints each method's outcome.
    uri = "https://cdn.example.com/in.mp4"
    calls = {
        "image_to_video.create": lambda: client.image_to_video.create(model="gen4_turbo", prompt_image=uri).id,
        "text_to_video.create": lambda: client.text_to_video.create(
            model="gen4.5", prompt_text="a cat", ratio="1280:720", duration=5
        ).id,
        "video_to_video.create": lambda: client.video_to_video.create(model="gen4_aleph", video_uri=uri, prompt_text="x").id,
        "text_to_image.create": lambda: client.text_to_image.create(model="gen4_image", prompt_text="a cat", ratio="1920:1080").id,
        "character_performance.create": lambda: client.character_performance.create(
            model="act_two", character={"type": "image", "uri": uri}, reference={"type": "video", "uri": uri}
        ).id,
        "image_upscale.create": lambda: client.image_upscale.create(model="magnific_upscale", image_uri=uri).id,
        "video_upscale.create": lambda: client.video_upscale.create(model="upscale_v1", video_uri=uri).id,
        "text_to_speech.create": lambda: client.text_to_speech.create(
            model="eleven_multilingual_v2", prompt_text="hello", voice={"type": "runway-preset", "presetId": "Leslie"}
        ).id,
        "speech_to_speech.create": lambda: client.speech_to_speech.create(
            model="eleven_multilingual_sts_v2", media={"type": "audio", "uri": uri},
            voice={"type": "runway-preset", "presetId": "Leslie"},
        ).id,
        "sound_effect.create": lambda: client.sound_effect.create(model="seed_audio", prompt_text="rain").id,
        "voice_dubbing.create": lambda: client.voice_dubbing.create(model="eleven_voice_dubbing", audio_uri=uri, target_lang="fr").id,
        "voice_isolation.create": lambda: client.voice_isolation.create(model="eleven_voice_isolation", audio_uri=uri).id,
        "video_to_audio.create": lambda: client.video_to_audio.create(model="mirelo_sfx_2_0", video_uri=uri, duration=5).id,
        "video_to_hdr.create": lambda: client.video_to_hdr.create(model="hdr_v1", video_uri=uri).id,
        "generate.video.create": lambda: client.generate.video.create(config_id="cfg", input={"prompt": "x"}).id,
        "generate.image.create": lambda: client.generate.image.create(config_id="cfg", input={"prompt": "x"}).id,
        "generate.audio.create": lambda: client.generate.audio.create(config_id="cfg", input={"prompt": "x"}).id,
        "recipes.ad_localization": lambda: client.recipes.ad_localization(reference_image=uri, target_language="fr", version="1").id,
        "recipes.marketing_stock_image": lambda: client.recipes.marketing_stock_image(prompt="x", version="1").id,
        "recipes.multi_shot_video": lambda: client.recipes.multi_shot_video(mode="auto", prompt="x", version="1").id,
        "recipes.product_ad": lambda: client.recipes.product_ad(product_images=[uri], version="1").id,
        "recipes.product_campaign_image": lambda: client.recipes.product_campaign_image(image=uri, prompt="x", version="1").id,
        "recipes.product_swap": lambda: client.recipes.product_swap(
            new_product_images=[uri], original_product_image=uri, reference_video=uri, version="1"
        ).id,
        "recipes.product_ugc": lambda: client.recipes.product_ugc(character_image=uri, product_image=uri, version="1").id,
        "avatar_videos.create": lambda: client.avatar_videos.create(
            model="gwm1_avatars", avatar={"type": "runway-preset", "presetId": "x"}, speech={"type": "text", "text": "hi"}
        ).id,
        "workflows.run": lambda: client.workflows.run("wf-1").id,
        "workflows.list": lambda: type(client.workflows.list()).__name__,
        "workflows.retrieve": lambda: client.workflows.retrieve("wf-1").id,
        "workflow_invocations.retrieve": lambda: client.workflow_invocations.retrieve(
            client.workflows.run("wf-1").id
        ).status,
        "uploads.create_ephemeral": lambda: client.uploads.create_ephemeral(
            file=("cat.png", b"\x89PNG\r\n\x1a\n0000", "image/png")
        ).uri,
        "organization.retrieve": lambda: client.organization.retrieve().credit_balance,
        "organization.retrieve_usage": lambda: len(client.organization.retrieve_usage().results),
        "voices.create": lambda: client.voices.create(
            name="v", from_={"type": "text", "model": "eleven_ttv_v3", "prompt": "calm"}
        ).id,
        "voices.list": lambda: type(client.voices.list(limit=10)).__name__,
        "voices.retrieve": lambda: client.voices.retrieve("v-1").id,
        "voices.update": lambda: type(client.voices.update("v-1", name="w")).__name__,
        "voices.delete": lambda: client.voices.delete("v-1"),
        "voices.preview": lambda: client.voices.preview(model="eleven_ttv_v3", prompt="calm").url,
        "avatars.create": lambda: client.avatars.create(
            name="a", personality="kind", reference_image=uri, voice={"type": "runway-live-preset", "presetId": "x"}
        ).id,
        "avatars.list": lambda: type(client.avatars.list(limit=10)).__name__,
        "avatars.retrieve": lambda: client.avatars.retrieve("a-1").id,
        "avatars.update": lambda: client.avatars.update("a-1", name="b").id,
        "avatars.delete": lambda: client.avatars.delete("a-1"),
        "documents.create": lambda: client.documents.create(content="text", name="d").id,
        "documents.list": lambda: type(client.documents.list(limit=10, order="desc", sort="createdAt")).__name__,
        "documents.retrieve": lambda: client.documents.retrieve("d-1").id,
        "documents.update": lambda: client.documents.update("d-1", name="e"),
        "documents.delete": lambda: client.documents.delete("d-1"),
        "routers.create": lambda: client.routers.create(slug="r").id,
        "routers.list": lambda: type(client.routers.list(limit=10)).__name__,
        "routers.retrieve": lambda: client.routers.retrieve("r-1").id,
        "routers.update": lambda: client.routers.update("r-1", name="s").id,
        "routers.delete": lambda: client.routers.delete("r-1"),
        "realtime_sessions.create": lambda: client.realtime_sessions.create(
            model="gwm1_avatars", avatar={"type": "runway-preset", "presetId": "x"}
        ).id,
        "realtime_sessions.retrieve": lambda: client.realtime_sessions.retrieve("s-1").id,
        "realtime_sessions.delete": lambda: client.realtime_sessions.delete("s-1"),
        "tasks.retrieve": lambda: client.tasks.retrieve(client.image_to_video.create(model="gen4_turbo", prompt_image=uri).id).status,
        "tasks.delete": lambda: client.tasks.delete(client.image_to_video.create(model="gen4_turbo", prompt_image=uri).id),
    }
    outcomes = {}
    for name, call in calls.items():
        try:
            outcomes[name] = {"ok": True, "value": str(call())}
        except Exception as error:  # reported per method: the test names the ones that fail
            outcomes[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
    print(json.dumps(outcomes))
else:
    sys.exit(f"unknown scenario {scenario}")
