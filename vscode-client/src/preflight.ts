// Before starting the server: is there a Python, does it have the nextword package, is the model
// file there? Each missing piece gets its own message saying what to run. No `vscode` import.

import { execFile } from 'node:child_process';

/** Runs in the chosen Python. Finds the package without importing it (importing loads torch,
 *  seconds), and asks nextword/weights/paths.py (standard library only) for the default model. */
const PROBE = String.raw`
import importlib.util, json, os, sys
out = {"python": sys.executable, "version": "%d.%d.%d" % sys.version_info[:3]}
spec = importlib.util.find_spec("nextword")
if spec is None or not spec.submodule_search_locations:
    out["package"] = None
else:
    pkg = list(spec.submodule_search_locations)[0]
    out["package"] = pkg
    model = os.environ.get("NEXTWORD_PREFLIGHT_MODEL", "")
    if not model:
        try:
            s = importlib.util.spec_from_file_location("_nextword_paths", os.path.join(pkg, "weights", "paths.py"))
            m = importlib.util.module_from_spec(s)
            s.loader.exec_module(m)
            model = str(m.default_model_path())
        except Exception as e:
            out["modelError"] = repr(e)
    out["model"] = model or None
    out["modelExists"] = bool(model) and os.path.isfile(model)
print(json.dumps(out))
`;

export type Preflight =
    | { kind: 'ok'; python: string; version: string; model?: string }
    | { kind: 'noPython'; python: string; detail: string }
    | { kind: 'oldPython'; python: string; version: string }
    | { kind: 'noPackage'; python: string; version: string }
    | { kind: 'noWeights'; python: string; model: string }
    | { kind: 'unknown'; python: string; detail: string };

export const MIN_PYTHON: [number, number] = [3, 11];

/** Checks `python` (and `modelPath`, when set) in at most `timeoutMs`. */
export function preflight(python: string, modelPath: string | undefined, timeoutMs = 30000): Promise<Preflight> {
    return new Promise((resolve) => {
        const env = { ...process.env, NEXTWORD_PREFLIGHT_MODEL: modelPath ?? '' };
        execFile(python, ['-I', '-c', PROBE], { env, timeout: timeoutMs, windowsHide: true }, (error, stdout, stderr) => {
            if (error) {
                const code = (error as NodeJS.ErrnoException).code;
                if (code === 'ENOENT' || code === 'EACCES') {
                    resolve({ kind: 'noPython', python, detail: String(error.message) });
                } else {
                    resolve({ kind: 'unknown', python, detail: `${error.message}\n${stderr}`.trim() });
                }
                return;
            }
            resolve(interpretProbe(python, stdout));
        });
    });
}

/** Turns the probe's JSON line into a verdict (exported for the unit tests). */
export function interpretProbe(python: string, stdout: string): Preflight {
    let info: { python?: string; version?: string; package?: string | null; model?: string | null; modelExists?: boolean };
    try {
        info = JSON.parse(stdout.trim().split('\n').pop() ?? '');
    } catch {
        return { kind: 'unknown', python, detail: `unexpected output: ${stdout.slice(0, 500)}` };
    }
    const version = info.version ?? '?';
    const [major, minor] = version.split('.').map((x) => Number.parseInt(x, 10));
    if (!(major > MIN_PYTHON[0] || (major === MIN_PYTHON[0] && minor >= MIN_PYTHON[1]))) {
        return { kind: 'oldPython', python, version };
    }
    if (!info.package) {
        return { kind: 'noPackage', python, version };
    }
    if (info.model && !info.modelExists) {
        return { kind: 'noWeights', python, model: info.model };
    }
    return { kind: 'ok', python, version, model: info.model ?? undefined };
}
