// `make bench`'s 32-bit heap figures: a Python script run on MicroPython's webassembly port (32-bit words and
// 16-byte heap blocks, as on the ESP32) under Node.js, with the library in the port's filesystem,
// tools/standin_socket.py as its `socket` and tools/standin_hashlib.py extending its `hashlib` with sha1.
//
//     node tools/wasm32.mjs MICROPYTHON_MJS LIB_DIR SCRIPT
//
// The script awaits `mark(name)` where the heap is to be read. The collector runs from here, between two steps
// of the event loop, with no Python frame on the stack: called from inside Python this port keeps garbage alive
// through stale words on its stack, which made figures kilobytes too high. Prints {name: bytes allocated} as
// JSON on the last line.
import fs from "fs";
import path from "path";

const [port, lib, script] = process.argv.slice(2);
const { loadMicroPython } = await import(path.resolve(port));
const said = [];
const mp = await loadMicroPython({
  heapsize: 4 * 1024 * 1024,
  stdout: (line) => (line.startsWith("@@") ? said.push(line.slice(2)) : console.log(line)),
  stderr: (line) => console.error(line),
});

function copy(src, dst) {
  mp.FS.mkdir(dst);
  for (const name of fs.readdirSync(src)) {
    const from = path.join(src, name);
    if (fs.statSync(from).isDirectory()) copy(from, dst + "/" + name);
    else if (name.endsWith(".py")) mp.FS.writeFile(dst + "/" + name, fs.readFileSync(from));
  }
}
copy(lib, "/lib");
mp.FS.mkdir("/standin");
for (const name of ["socket", "hashlib"])
  mp.FS.writeFile(`/standin/${name}.py`, fs.readFileSync(new URL(`standin_${name}.py`, import.meta.url)));
mp.runPython(`
import sys, asyncio
sys.path.insert(0, "/lib")
sys.path.append("/standin")
_resume = []

async def mark(name):
    ev = asyncio.Event()
    _resume.append(ev)
    print("@@" + name)
    await ev.wait()
`);

function allocated() {
  // The least of three collections: the first may still find a pointer the last step left in a register.
  let least = Infinity;
  for (let i = 0; i < 3; i++) {
    mp.runPython("import gc; gc.collect(); print('@@%d' % gc.mem_alloc())");
    least = Math.min(least, Number(said.pop()));
  }
  return least;
}

const marks = {};
let finished = false;
const run = mp.runPythonAsync(fs.readFileSync(script, "utf8")).finally(() => (finished = true));
while (!finished) {
  await new Promise((r) => setTimeout(r, 1));
  while (said.length) {
    marks[said.shift()] = allocated();
    mp.runPython("_resume.pop(0).set()");
  }
}
await run;
console.log(JSON.stringify(marks));
