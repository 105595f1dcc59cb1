// Run by tick-shape.test.ts as `node --allow-natives-syntax --expose-gc tick-shape-child.mjs <mode>`
// against the built package: warms process.nextTick, idles through full collections with no tick
// queued (what a server between bursts of traffic goes through), queues ticks again, then prints V8's
// view of nextTick, whose feedback slots show whether its property definitions stayed monomorphic.
import { holdTickShape, tickShapeHeld } from "../../dist/index.js";

const mode = process.argv[2];
const noop = () => {};
const nextTurn = () => new Promise((resolve) => setImmediate(resolve));
// Natives syntax parses only in code compiled with the flag, and lint tools cannot read it: not here.
const natives = (call) => new Function("fn", `return %${call}(fn)`);
const [debugPrint, prepare, optimizeOnNextCall] = [
  "DebugPrint",
  "PrepareFunctionForOptimization",
  "OptimizeFunctionOnNextCall",
].map(natives);

if (mode === "held") holdTickShape();
await nextTurn();
// Each spell: a burst of ticks with nextTick optimized, as in a busy server, then an idle spell with
// no tick queued. V8 keeps an unused hidden class through two full collections
// (--retain-maps-for-n-gc), and whether the last tick's classes are still in use when a collection
// starts varies from run to run: several spells make the outcome certain.
for (let spell = 0; spell < 4; spell += 1) {
  for (let i = 0; i < 20_000; i += 1) process.nextTick(noop);
  await nextTurn();
  prepare(process.nextTick);
  for (let i = 0; i < 100; i += 1) process.nextTick(noop);
  optimizeOnNextCall(process.nextTick);
  process.nextTick(noop);
  await nextTurn();
  await nextTurn();
  for (let i = 0; i < 12; i += 1) globalThis.gc();
  await nextTurn();
  for (let i = 0; i < 100; i += 1) process.nextTick(noop);
  await nextTurn();
}
// V8 prints to the process's stdout, which the test points at a file: a pipe, made non-blocking by
// node, would drop most of it.
process.stdout.write(`HELD ${tickShapeHeld()}\n`, () => debugPrint(process.nextTick));
