// Clicks through cfx-viz's explorer.html in Debian's Chromium as a person
// would, with puppeteer-core (it uses /usr/bin/chromium, downloads nothing):
// filter to misclassified cats, open one, switch layers, open a channel's top
// images, the embedding, then a comparison's side-by-side view. Screenshots
// of every step go to OUT_DIR; what the page showed goes to OUT_DIR/shown.txt
// as lines "PAGE RUN INDEX CLASS PROB" (PAGE: run or compare, RUN: a or b)
// and "count CLASS N", which
// tests/viz_test.sh checks against analysis.h5. Prints load and interaction
// times.
//
// usage: node explorer_test.mjs RUN_EXPLORER_HTML COMPARE_EXPLORER_HTML OUT_DIR
import fs from "node:fs";
import path from "node:path";
import puppeteer from "puppeteer-core";

const [runPage, cmpPage, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node explorer_test.mjs RUN_EXPLORER_HTML COMPARE_EXPLORER_HTML OUT_DIR");
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });
const shown = [];
let step = 0;

function fail(msg) {
  throw new Error(msg);
}
async function shot(page, name) {
  const file = path.join(outDir, String(++step).padStart(2, "0") + "-" + name + ".png");
  await page.screenshot({ path: file });
  console.log("screenshot " + file);
}
async function openPage(page, file) {
  const t = Date.now();
  await page.goto("file://" + path.resolve(file));
  await page.waitForSelector('body[data-ready="1"]', { timeout: 30000 });
  const ms = Date.now() - t;
  const timings = await page.evaluate(() => window.cfxTimings);
  console.log(`${file}: ready ${ms} ms after navigation (index.js ${timings.index_ms.toFixed(0)} ms,` +
    ` grid ${timings.first_grid_ms.toFixed(0)} ms after the page started)`);
}
async function text(page, sel) {
  return page.$eval(sel, (e) => e.textContent.trim());
}
// Sets a <select> as a user does (the change event fires) and returns the page's own time.
async function choose(page, sel, value) {
  const t = Date.now();
  await page.select(sel, value);
  const ms = Date.now() - t;
  return { wall: ms, page: await page.evaluate(() => window.cfxTimings.filter_ms) };
}
// Clicks the first thumbnail and waits for its detail view; returns its index.
async function openFirst(page) {
  const i = await page.$eval(".cell", (c) => +c.dataset.i);
  const t = Date.now();
  await page.click(`.cell[data-i="${i}"]`);
  await page.waitForFunction((i) => {
    const h = document.getElementById("detail-title");
    return h && h.textContent === "Test image #" + i;
  }, { timeout: 10000 }, i);
  console.log(`opened test image #${i} in ${Date.now() - t} ms (page: ` +
    `${(await page.evaluate(() => window.cfxTimings.open_ms)).toFixed(1)} ms)`);
  return i;
}
// The prediction a run's column shows, recorded for the check against analysis.h5.
async function record(page, tag, slot, i) {
  const col = `.col[data-run="${slot}"]`;
  const cls = await text(page, col + " .pred-class"), p = await text(page, col + " .pred-prob");
  shown.push(`${tag} ${slot} ${i} ${cls} ${p}`);
  return cls;
}
// Every attribution map of a column is drawn (not one flat colour).
async function checkMaps(page, slot) {
  const stats = await page.$$eval(`.col[data-run="${slot}"] canvas[data-method]`, (cs) =>
    cs.map((c) => {
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data, seen = new Set();
      for (let p = 0; p < d.length; p += 4) seen.add(d[p] << 16 | d[p + 1] << 8 | d[p + 2]);
      return c.dataset.method + ":" + seen.size;
    }));
  if (stats.length !== 8) fail(`run ${slot}: ${stats.length} attribution maps shown, expected 8`);
  const flat = stats.filter((s) => +s.split(":")[1] < 2);
  if (flat.length) fail(`run ${slot}: blank attribution maps: ${flat.join(", ")}`);
  console.log(`run ${slot}: 8 attribution maps drawn (${stats.join(" ")} colours)`);
}
// Switches to the last layer and checks the feature maps follow, then opens a channel's top images.
async function checkLayers(page, slot) {
  const sel = `#layer-${slot}`, col = `.col[data-run="${slot}"]`;
  const layers = await page.$$eval(sel + " option", (o) => o.map((x) => x.textContent));
  if (layers.length < 2) fail(`run ${slot}: ${layers.length} layers to choose from`);
  const before = await page.$$eval(col + " .fmaps figure", (f) => f.length);
  await page.select(sel, String(layers.length - 1));
  const channels = +layers[layers.length - 1].match(/(\d+) channels/)[1];
  const after = await page.$$eval(col + " .fmaps figure", (f) => f.length);
  if (after !== Math.min(32, channels))
    fail(`run ${slot}: layer ${layers[layers.length - 1]} shows ${after} feature maps`);
  console.log(`run ${slot}: ${layers[0]} showed ${before} feature maps, ` +
    `${layers[layers.length - 1]} shows ${after}`);
  await page.click(col + " .fmaps figure");
  const tops = await page.$$eval(col + " .tops canvas", (c) => c.length);
  if (tops !== 9) fail(`run ${slot}: a channel shows ${tops} top images, expected 9`);
  await page.$eval(col + " .tops", (e) => e.scrollIntoView({ block: "end" }));
}

const browser = await puppeteer.launch({
  executablePath: process.env.CFX_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.setViewport({ width: 1400, height: 1000 });

  // One run: all 10,000 test images, then the misclassified cats.
  await openPage(page, runPage);
  const all = await text(page, "#count");
  if (!/^10,000 of 10,000/.test(all)) fail(`the grid lists '${all}'`);
  await shot(page, "run-loaded");
  const t1 = await choose(page, "#f-true", "3");
  const t2 = await choose(page, "#f-result", "incorrect");
  const count = await text(page, "#count");
  console.log(`filter true=cat: ${t1.wall} ms (page ${t1.page.toFixed(1)} ms); ` +
    `incorrect: ${t2.wall} ms (page ${t2.page.toFixed(1)} ms): ${count}`);
  shown.push("count cat " + count.split(" ")[0].replace(/,/g, ""));
  const titles = await page.$$eval(".cell", (c) => c.map((x) => x.title));
  const notCat = titles.filter((t) => !/^#\d+: cat, predicted (?!cat )/.test(t));
  if (notCat.length) fail(`the filtered grid shows ${notCat[0]}`);
  await page.click("#f-detail");
  await shot(page, "misclassified-cats");
  const i = await openFirst(page);
  const cls = await record(page, "run", "a", i);
  if (cls === "cat") fail(`image #${i} is listed as misclassified but shown predicted cat`);
  await checkMaps(page, "a");
  await shot(page, "cat-opened");
  await checkLayers(page, "a");
  await shot(page, "last-layer-channel");
  await page.click("#nav-embedding");
  await shot(page, "embedding");

  // A comparison: both models' views of one image side by side.
  await openPage(page, cmpPage);
  await page.click("#f-detail");
  const j = await openFirst(page);
  await page.click("#view-both");
  await page.waitForSelector('.col[data-run="b"]');
  for (const slot of ["a", "b"]) {
    await record(page, "compare", slot, j);
    await checkMaps(page, slot);
  }
  await shot(page, "compare-both");
  await page.click("#view-b");
  await page.waitForFunction(() => !document.querySelector('.col[data-run="a"]'));
  await checkLayers(page, "b");
  await shot(page, "compare-b-channel");
  if (errors.length) fail("errors in the page: " + errors.join("; "));
  fs.writeFileSync(path.join(outDir, "shown.txt"), shown.join("\n") + "\n");
  console.log("ok: explorer clicked through; shown.txt has " + shown.length + " lines");
} catch (e) {
  console.error("FAIL: " + e.message);
  process.exitCode = 1;
} finally {
  await browser.close();
}
