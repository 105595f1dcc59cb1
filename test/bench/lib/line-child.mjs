/**
 * Bench children that talk a line protocol on stdin/stdout (lib/client.mjs and the scenario modules'
 * own children): replies are read one line at a time, in order; the last 4,000 characters of stderr are
 * kept for error messages; every pending read fails when the child exits.
 */
export function readLines(child, name) {
  let stderr = "";
  child.stderr.on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  let out = "";
  const waiters = [];
  child.stdout.on("data", (chunk) => {
    out += chunk;
    for (let newline = out.indexOf("\n"); newline >= 0; newline = out.indexOf("\n")) {
      const line = out.slice(0, newline);
      out = out.slice(newline + 1);
      waiters.shift()?.resolve(line);
    }
  });
  child.once("exit", (code) => {
    for (const waiter of waiters.splice(0)) waiter.reject(new Error(`${name} exited (${code}): ${stderr}`));
  });
  const nextLine = () => new Promise((resolve, reject) => waiters.push({ resolve, reject }));
  return {
    stderr: () => stderr,
    nextLine,
    /** Writes one command line; resolves with the next line the child prints. */
    ask(command) {
      const reply = nextLine();
      child.stdin.write(`${command}\n`);
      return reply;
    },
  };
}
