// Drives runway-proxy with the official Runway Node SDK (`@runwayml/sdk`, npm; found
// through NODE_PATH), as a user would: a representative method of each kind, each result
// read through the SDK's types. Prints one JSON line.
const RunwayML = require("@runwayml/sdk").default;

const client = new RunwayML({ baseURL: process.env.RUNWAYML_BASE_URL, apiKey: "sk-test-node-sdk" });

(async () => {
  const results = {};
  const video = await client.textToVideo.create({ model: "gen4.5", promptText: "a cat", ratio: "1280:720", duration: 5 });
  results.text_to_video = video.id;
  const voice = await client.voices.create({
    name: "My voice",
    from: { type: "text", model: "eleven_ttv_v3", prompt: "a calm voice" },
  });
  results.voice = voice.id;
  const organization = await client.organization.retrieve();
  results.credit_balance = organization.creditBalance;
  const task = await client.imageToVideo.create({
    model: "gen4_turbo",
    promptImage: "https://cdn.example.com/cat.png",
    ratio: "1280:720",
  });
  await client.tasks.delete(task.id);
  results.cancelled = task.id;
  results.cancelled_status = (await client.tasks.retrieve(task.id)).status;
  console.log(JSON.stringify(results));
})().catch((error) => {
  console.log(JSON.stringify({ error: String(error) }));
  process.exit(1);
});
