import { type FSWatcher, watch } from "node:fs";
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { debuglog } from "node:util";
import { MeshError, MeshErrorCode } from "@inmesh/core";
import type { ManifestFile } from "../model/index.js";

const debug = debuglog("mesh");

export interface ReadManifestFolderOptions {
  /** @default 1 MiB */
  readonly maxFileBytes?: number;
  /** @default 1000 */
  readonly maxFiles?: number;
  /** @default 8 */
  readonly maxDepth?: number;
}

const MANIFEST_EXTENSIONS = new Set([".yaml", ".yml", ".json"]);

/** Editor swap files, backups and hidden files are never manifests. */
function isManifestName(name: string): boolean {
  if (name.startsWith(".") || name.endsWith("~")) return false;
  return MANIFEST_EXTENSIONS.has(path.extname(name).toLowerCase());
}

async function listManifestPaths(
  dir: string,
  options: Required<ReadManifestFolderOptions>,
): Promise<string[]> {
  const found: string[] = [];
  const visit = async (current: string, depth: number): Promise<void> => {
    const entries = await readdir(current, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      const full = path.join(current, entry.name);
      if (entry.isDirectory()) {
        if (!entry.name.startsWith(".") && depth < options.maxDepth) await visit(full, depth + 1);
      } else if ((entry.isFile() || entry.isSymbolicLink()) && isManifestName(entry.name)) {
        found.push(full);
        if (found.length > options.maxFiles) {
          throw new MeshError(
            MeshErrorCode.MANIFEST_INVALID,
            `${dir} holds more than ${options.maxFiles} manifest files`,
            {
              details: { file: dir },
            },
          );
        }
      }
    }
  };
  await visit(dir, 0);
  return found;
}

/**
 * Reads every `*.yaml`, `*.yml` and `*.json` file under `dir` (sorted, so documents keep a stable order).
 * Throws MeshError(MANIFEST_INVALID) naming the file when the folder or a file cannot be read or is too large.
 */
export async function readManifestFolder(
  dir: string,
  options: ReadManifestFolderOptions = {},
): Promise<ManifestFile[]> {
  const limits = { maxFileBytes: 1024 * 1024, maxFiles: 1000, maxDepth: 8, ...options };
  let paths: string[];
  try {
    paths = await listManifestPaths(dir, limits);
  } catch (error) {
    if (error instanceof MeshError) throw error;
    throw new MeshError(
      MeshErrorCode.MANIFEST_INVALID,
      `cannot read manifest folder ${dir}: ${(error as Error).message}`,
      {
        cause: error,
        details: { file: dir },
      },
    );
  }
  const files: ManifestFile[] = [];
  for (const file of paths) {
    try {
      const info = await stat(file);
      if (!info.isFile()) continue;
      if (info.size > limits.maxFileBytes) {
        throw new MeshError(
          MeshErrorCode.MANIFEST_INVALID,
          `${file} is ${info.size} bytes, over the ${limits.maxFileBytes}-byte limit`,
          { details: { file } },
        );
      }
      files.push({ path: file, text: await readFile(file, "utf8") });
    } catch (error) {
      if (error instanceof MeshError) throw error;
      // A file deleted between listing and reading is simply gone; the next event reloads again.
      if ((error as NodeJS.ErrnoException).code === "ENOENT") continue;
      throw new MeshError(
        MeshErrorCode.MANIFEST_INVALID,
        `cannot read ${file}: ${(error as Error).message}`,
        {
          cause: error,
          details: { file },
        },
      );
    }
  }
  return files;
}

export interface FolderWatcherOptions {
  readonly dir: string;
  /** Called (never concurrently) after changes settle for `debounceMs`. */
  readonly onChange: () => void;
  /** @default 150 */
  readonly debounceMs?: number;
  /**
   * fs.watch can miss events (editors that swap files, network folders); a cheap listing poll at this
   * interval catches those. When fs.watch is unavailable the poll runs at `fallbackPollMs` instead.
   * @default 2000
   */
  readonly pollIntervalMs?: number;
  /** @default 250 */
  readonly fallbackPollMs?: number;
}

export interface FolderWatcher {
  close(): void;
}

async function folderSignature(dir: string): Promise<string> {
  try {
    const paths = await listManifestPaths(dir, { maxFileBytes: 0, maxFiles: 1000, maxDepth: 8 });
    const parts: string[] = [];
    for (const file of paths) {
      try {
        const info = await stat(file);
        parts.push(`${file}\0${info.size}\0${info.mtimeMs}`);
      } catch {
        parts.push(`${file}\0gone`);
      }
    }
    return parts.join("\n");
  } catch (error) {
    return `error:${(error as Error).message}`;
  }
}

/** Watches a manifest folder: fs.watch (recursive where the platform has it) plus a listing poll. */
export function watchManifestFolder(options: FolderWatcherOptions): FolderWatcher {
  const debounceMs = options.debounceMs ?? 150;
  let closed = false;
  let debounceTimer: NodeJS.Timeout | undefined;
  let pollTimer: NodeJS.Timeout | undefined;
  let lastSignature: string | undefined;
  let watcher: FSWatcher | undefined;

  const schedule = () => {
    if (closed) return;
    if (debounceTimer !== undefined) clearTimeout(debounceTimer);
    debounceTimer = setTimeout(() => {
      debounceTimer = undefined;
      if (!closed) options.onChange();
    }, debounceMs);
    debounceTimer.unref();
  };

  const startWatch = (): boolean => {
    for (const recursive of [true, false]) {
      try {
        watcher = watch(options.dir, { recursive, persistent: false }, (_event, filename) => {
          // Hidden entries (a state folder kept inside the manifests, editor swap files) are never read.
          if (typeof filename === "string" && filename.split(/[\\/]/).some((part) => part.startsWith(".")))
            return;
          schedule();
        });
        watcher.on("error", (error) => {
          debug("control-plane: watching %s failed (%s); polling instead", options.dir, error.message);
          watcher?.close();
          watcher = undefined;
          startPoll(options.fallbackPollMs ?? 250);
        });
        return true;
      } catch (error) {
        debug(
          "control-plane: fs.watch(%s, recursive=%s) failed: %s",
          options.dir,
          recursive,
          (error as Error).message,
        );
      }
    }
    return false;
  };

  // Each restart of the poll bumps the generation, so a tick still in flight from the old loop stops.
  let generation = 0;
  const startPoll = (intervalMs: number) => {
    generation += 1;
    const mine = generation;
    if (pollTimer !== undefined) clearTimeout(pollTimer);
    const tick = async () => {
      const signature = await folderSignature(options.dir);
      if (closed || mine !== generation) return;
      if (lastSignature !== undefined && signature !== lastSignature) schedule();
      lastSignature = signature;
      pollTimer = setTimeout(tick, intervalMs);
      pollTimer.unref();
    };
    void tick();
  };

  const watching = startWatch();
  startPoll(watching ? (options.pollIntervalMs ?? 2000) : (options.fallbackPollMs ?? 250));

  return {
    close() {
      closed = true;
      watcher?.close();
      if (debounceTimer !== undefined) clearTimeout(debounceTimer);
      if (pollTimer !== undefined) clearTimeout(pollTimer);
    },
  };
}
