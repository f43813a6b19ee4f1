// Settings -> how to start the server and what to send it. No `vscode` import here, so the logic can
// be unit tested with plain Node (src/test/settings.test.ts).

import * as path from 'node:path';

/** The extension's settings (section `nextword` in package.json's contributes.configuration). */
export interface NextwordSettings {
    enable: boolean;
    pythonPath: string;
    serverCommand: string[];
    modelPath: string;
    device: string;
    dtype: string;
    maxSuggestions: number;
    languages: string[];
    maxContextTokens: number;
    maxSessions: number;
    inline: boolean;
    cacheModel: string;
    adapterPath: string;
}

export const DEFAULT_SETTINGS: NextwordSettings = {
    enable: true,
    pythonPath: '',
    serverCommand: [],
    modelPath: '',
    device: 'auto',
    dtype: 'auto',
    maxSuggestions: 5,
    languages: ['markdown', 'plaintext'],
    maxContextTokens: 1024,
    maxSessions: 8,
    inline: true,
    cacheModel: 'document',
    adapterPath: '',
};

/** Whose words the server's cache model counts (see the server's README). */
export const CACHE_MODELS = ['off', 'document', 'workspace'];

/** The server's limit on suggestions per request. */
export const MAX_SUGGESTIONS = 10;

/** Settings that only the client uses; a change to one of them needs a server restart. */
export const RESTART_SETTINGS = ['pythonPath', 'serverCommand', 'languages'] as const;

export interface Environment {
    /** Folder the extension is installed in (context.extensionPath). */
    extensionPath: string;
    /** First workspace folder, for ${workspaceFolder}; undefined when none is open. */
    workspaceFolder?: string;
    homeDir: string;
    platform: NodeJS.Platform;
    exists(file: string): boolean;
}

export interface ServerCommand {
    command: string;
    args: string[];
    /** The Python interpreter, when the command is `<python> -m nextword serve --stdio`. */
    python?: string;
    /** Where the command came from, for messages. */
    origin: 'nextword.serverCommand' | 'nextword.pythonPath' | 'checkout .venv' | 'default';
}

export const SERVE_ARGS = ['-m', 'nextword', 'serve', '--stdio'];

/** Expands `~`, `${userHome}` and `${workspaceFolder}` in a path-like setting. */
export function expandPath(value: string, env: Pick<Environment, 'homeDir' | 'workspaceFolder'>): string {
    let out = value.trim();
    if (out === '~' || out.startsWith('~/')) {
        out = env.homeDir + out.slice(1);
    }
    out = out.replace(/\$\{userHome\}/g, env.homeDir);
    if (env.workspaceFolder !== undefined) {
        out = out.replace(/\$\{workspaceFolder\}/g, env.workspaceFolder);
    }
    return out;
}

/** The Python of the nextword checkout the extension runs from (vscode-client/ beside .venv/). */
export function checkoutPython(env: Environment): string | undefined {
    const root = path.resolve(env.extensionPath, '..');
    const candidate = env.platform === 'win32'
        ? path.join(root, '.venv', 'Scripts', 'python.exe')
        : path.join(root, '.venv', 'bin', 'python');
    return env.exists(candidate) ? candidate : undefined;
}

/**
 * How to start the server, in order of precedence: `nextword.serverCommand` (a full command),
 * `nextword.pythonPath`, the `.venv` of the checkout the extension runs from, `python3`.
 */
export function resolveServerCommand(settings: NextwordSettings, env: Environment): ServerCommand {
    const full = (settings.serverCommand ?? []).filter((part) => typeof part === 'string' && part.trim() !== '');
    if (full.length > 0) {
        const [command, ...args] = full.map((part) => expandPath(part, env));
        return { command, args, origin: 'nextword.serverCommand' };
    }
    if (settings.pythonPath && settings.pythonPath.trim() !== '') {
        const python = expandPath(settings.pythonPath, env);
        return { command: python, args: [...SERVE_ARGS], python, origin: 'nextword.pythonPath' };
    }
    const venv = checkoutPython(env);
    if (venv !== undefined) {
        return { command: venv, args: [...SERVE_ARGS], python: venv, origin: 'checkout .venv' };
    }
    const python = env.platform === 'win32' ? 'python' : 'python3';
    return { command: python, args: [...SERVE_ARGS], python, origin: 'default' };
}

/** What the server gets: as initializationOptions and as the answer to workspace/configuration. */
export interface ServerSettings {
    modelPath?: string;
    device: string;
    dtype?: string;
    maxSuggestions: number;
    languages: string[];
    maxContextTokens: number;
    maxSessions: number;
    inline: boolean;
    cacheModel: string;
    adapterPath?: string;
}

/**
 * The server's view of the settings: unset values are left out so the server uses its own
 * defaults (an empty modelPath means the default model; dtype "auto" means the server picks).
 */
export function serverSettings(settings: NextwordSettings, env: Pick<Environment, 'homeDir' | 'workspaceFolder'>): ServerSettings {
    const out: ServerSettings = {
        device: settings.device || 'auto',
        maxSuggestions: clampInt(settings.maxSuggestions, 1, MAX_SUGGESTIONS, DEFAULT_SETTINGS.maxSuggestions),
        languages: Array.isArray(settings.languages) ? settings.languages.filter((l) => typeof l === 'string' && l !== '') : [...DEFAULT_SETTINGS.languages],
        maxContextTokens: clampInt(settings.maxContextTokens, 64, 8192, DEFAULT_SETTINGS.maxContextTokens),
        maxSessions: clampInt(settings.maxSessions, 1, 64, DEFAULT_SETTINGS.maxSessions),
        inline: settings.inline !== false,
        cacheModel: CACHE_MODELS.includes(settings.cacheModel) ? settings.cacheModel : DEFAULT_SETTINGS.cacheModel,
    };
    const modelPath = resolveModelPath(settings, env);
    if (modelPath !== undefined) {
        out.modelPath = modelPath;
    }
    const adapterPath = resolvePath(settings.adapterPath, env);
    if (adapterPath !== undefined) {
        out.adapterPath = adapterPath;
    }
    if (settings.dtype && settings.dtype !== 'auto') {
        out.dtype = settings.dtype;
    }
    return out;
}

/** nextword.modelPath made absolute (relative paths are taken from the first workspace folder). */
export function resolveModelPath(settings: NextwordSettings, env: Pick<Environment, 'homeDir' | 'workspaceFolder'>): string | undefined {
    return resolvePath(settings.modelPath, env);
}

/** A file setting made absolute (~ and ${workspaceFolder} expanded, relative to the workspace); undefined when empty. */
function resolvePath(value: string | undefined, env: Pick<Environment, 'homeDir' | 'workspaceFolder'>): string | undefined {
    if (!value || value.trim() === '') {
        return undefined;
    }
    const expanded = expandPath(value, env);
    if (path.isAbsolute(expanded) || env.workspaceFolder === undefined) {
        return expanded;
    }
    return path.join(env.workspaceFolder, expanded);
}

/** The documents the client sends to the server: files and unsaved files of these languages. */
export function documentSelector(languages: string[]): { scheme: string; language: string }[] {
    const selector: { scheme: string; language: string }[] = [];
    for (const language of languages) {
        for (const scheme of ['file', 'untitled', 'vscode-remote']) {
            selector.push({ scheme, language });
        }
    }
    return selector;
}

/** Quotes a command for display (the output channel, notifications). */
export function formatCommand(command: ServerCommand): string {
    return [command.command, ...command.args].map((part) => (/[\s"'$]/.test(part) ? JSON.stringify(part) : part)).join(' ');
}

function clampInt(value: unknown, min: number, max: number, fallback: number): number {
    if (typeof value !== 'number' || !Number.isFinite(value)) {
        return fallback;
    }
    return Math.min(max, Math.max(min, Math.round(value)));
}
