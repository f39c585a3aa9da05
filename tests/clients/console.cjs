// Drives the proxy's web console in Debian's headless Chromium (playwright-core), and
// prints one JSON line of what it saw for tests/console.rs to judge. Environment:
// CONSOLE_URL (the console on the proxy), ADMIN_TOKEN, SHOTS (a directory for screenshots).
"use strict";

const { chromium } = require("playwright-core");

const url = process.env.CONSOLE_URL;
const token = process.env.ADMIN_TOKEN;
const shots = process.env.SHOTS;
const origin = new URL(url).origin;

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const seen = {};
  try {
    const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
    const requests = [];
    const problems = [];
    page.on("request", (request) => requests.push(request.url()));
    page.on("console", (message) => {
      // Chromium logs each refused request; the 401s without the token are expected.
      if (message.type() === "error" && !/status of 401/.test(message.text())) problems.push(message.text());
    });
    page.on("pageerror", (error) => problems.push(String(error)));

    // Without the token: the login form and nothing else, and the data refused.
    await page.goto(url);
    await page.waitForSelector("#login:not([hidden])");
    seen.login = await page.evaluate(async () => ({
      form: !document.getElementById("login").hidden,
      nav: !document.getElementById("nav").hidden,
      app: !document.getElementById("app").hidden,
      links: document.querySelectorAll("a").length,
      text: document.body.innerText,
      samples: (await fetch("/-/console/samples")).status,
      tasks: (await fetch("/-/tasks")).status,
    }));
    seen.policy = (await page.request.get(url)).headers()["content-security-policy"];

    // A wrong token is refused, the right one opens the console.
    await page.fill("#token", "not-the-token");
    await page.click("#login button[type=submit]");
    await page.waitForFunction(() => /refused/.test(document.getElementById("login-why").textContent));
    seen.wrong = await page.textContent("#login-why");
    await page.fill("#token", token);
    await page.click("#login button[type=submit]");
    await page.waitForSelector("#nav:not([hidden]) a[data-page=overview]");
    await page.waitForSelector("[data-chart=webhooks] polyline", { state: "attached" });
    seen.charts = await page.$$eval("[data-chart]", (cards) => cards.map((c) => ({
      id: c.dataset.chart,
      series: c.querySelectorAll("polyline").length,
      legend: c.querySelector(".legend").innerText,
    })));
    seen.build = await page.textContent("#build");
    seen.stored = await page.evaluate(() => sessionStorage.getItem("runway-proxy.admin-token") !== null);
    await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

    await page.click("a[data-page=tasks]");
    await page.waitForSelector("#tasks tbody tr[data-task]");
    seen.tasks = await page.$$eval("#tasks tbody tr[data-task]", (rows) => rows.map((r) => ({
      id: r.dataset.task,
      cells: [...r.cells].map((c) => c.innerText.trim()),
    })));
    await page.screenshot({ path: `${shots}/tasks.png`, fullPage: true });
    // Filtered by key, in the form.
    await page.fill("input[name=key]", "studio");
    await page.click(".filters button[type=submit]");
    await page.waitForFunction(() => location.hash.includes("key=studio"));
    await page.waitForSelector("#tasks tbody tr");
    seen.studio = await page.$$eval("#tasks tbody tr[data-task]", (rows) => rows.map((r) => r.dataset.task));

    // A task's page: its timeline.
    const first = seen.tasks.find((t) => t.cells[1] === "done") || seen.tasks[0];
    await page.click(`tr[data-task="${first.id}"] a`);
    await page.waitForSelector("#timeline li");
    seen.task = await page.evaluate(() => ({
      id: document.getElementById("task-id").textContent,
      timeline: [...document.querySelectorAll("#timeline li")].map((li) => ({
        kind: li.className, text: li.innerText,
      })),
      trace: document.querySelector("[data-fact='Trace id']").textContent,
    }));
    await page.screenshot({ path: `${shots}/task.png`, fullPage: true });

    await page.click("a[data-page=usage]");
    await page.waitForSelector("#budgets meter");
    seen.budgets = await page.$$eval("#budgets [data-key]", (cards) => cards.map((c) => ({
      key: c.dataset.key,
      meters: [...c.querySelectorAll("meter")].map((m) => ({ budget: m.dataset.budget, value: m.value, max: m.max })),
      text: c.innerText,
    })));
    await page.screenshot({ path: `${shots}/usage.png`, fullPage: true });

    await page.click("a[data-page=deliveries]");
    await page.waitForSelector("#dead tbody tr[data-delivery]");
    seen.dead = await page.$$eval("#dead tbody tr[data-delivery]", (rows) => rows.map((r) => ({
      id: r.dataset.delivery, cells: [...r.cells].map((c) => c.innerText.trim()),
    })));
    await page.screenshot({ path: `${shots}/deliveries.png`, fullPage: true });
    await page.click(`#dead tr[data-delivery="${seen.dead[0].id}"] button.replay`);
    await page.waitForSelector("#replayed .notice");
    seen.replayed = await page.textContent("#replayed");
    await page.waitForFunction(
      (id) => !document.querySelector(`#dead tr[data-delivery="${id}"]`),
      seen.dead[0].id,
    );
    seen.after = await page.$$eval("#dead tbody tr[data-delivery]", (rows) => rows.length);

    // Signing out forgets the token and shows the login form again.
    await page.click("#nav button");
    await page.waitForSelector("#login:not([hidden])");
    seen.signedOut = await page.evaluate(() => ({
      why: document.getElementById("login-why").textContent,
      stored: sessionStorage.getItem("runway-proxy.admin-token"),
      app: document.getElementById("app").childElementCount,
    }));
    await page.fill("#token", process.env.ADMIN_TOKEN);
    await page.click("#login button[type=submit]");
    await page.waitForSelector("#nav:not([hidden]) a[data-page=overview]");

    // Overview again, for the README's picture.
    await page.click("a[data-page=overview]");
    await page.waitForSelector("[data-chart=requests] polyline", { state: "attached" });
    await page.screenshot({ path: `${shots}/console.png` });

    seen.requests = requests;
    seen.offProxy = requests.filter((r) => !r.startsWith(origin + "/") && !r.startsWith("data:"));
    seen.problems = problems;
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(seen) + "\n");
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack || error) + "\n");
  process.exit(1);
});
