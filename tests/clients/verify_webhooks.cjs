// Verifies relayed webhooks with the JS `standardwebhooks` library (npm; found through
// NODE_PATH). Reads {"secret": ..., "webhooks": [{"headers": {...}, "body": "..."}]} on
// stdin and prints one JSON line: how many verified, and the error for each that did not.
const { Webhook } = require("standardwebhooks");

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const given = JSON.parse(input);
  const webhook = new Webhook(given.secret);
  let verified = 0;
  const errors = [];
  for (const message of given.webhooks) {
    try {
      webhook.verify(message.body, message.headers);
      verified += 1;
    } catch (error) {
      errors.push(`${error.name}: ${error.message}`);
    }
  }
  console.log(JSON.stringify({ verified, errors }));
});
