// Unit tests for the extension's own logic: settings -> server command and server settings, and the
// preflight verdicts. Run with `npm test` (esbuild bundles them, `node --test` runs them).
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { interpretProbe } from '../preflight';
import {
    DEFAULT_SETTINGS,
    Environment,
    NextwordSettings,
    SERVE_ARGS,
    documentSelector,
    expandPath,
    formatCommand,
    resolveServerCommand,
    serverSettings,
} from '../settings';

function env(existing: string[] = [], overrides: Partial<Environment> = {}): Environment {
    return {
        extensionPath: '/src/nextword/vscode-client',
        workspaceFolder: '/home/ann/notes',
        homeDir: '/home/ann',
        platform: 'linux',
        exists: (file) => existing.includes(file),
        ...overrides,
    };
}

function settings(overrides: Partial<NextwordSettings> = {}): NextwordSettings {
    return { ...DEFAULT_SETTINGS, ...overrides };
}

test('default: python3 -m nextword serve --stdio', () => {
    const cmd = resolveServerCommand(settings(), env());
    assert.deepEqual([cmd.command, ...cmd.args], ['python3', '-m', 'nextword', 'serve', '--stdio']);
    assert.equal(cmd.python, 'python3');
    assert.equal(cmd.origin, 'default');
});

test('running from a checkout: its .venv python', () => {
    const venv = '/src/nextword/.venv/bin/python';
    const cmd = resolveServerCommand(settings(), env([venv]));
    assert.equal(cmd.command, venv);
    assert.deepEqual(cmd.args, SERVE_ARGS);
    assert.equal(cmd.origin, 'checkout .venv');
});

test('windows checkout venv and default interpreter', () => {
    const winEnv = env(['/src/nextword/.venv/Scripts/python.exe'], { platform: 'win32' });
    assert.equal(resolveServerCommand(settings(), winEnv).origin, 'checkout .venv');
    assert.equal(resolveServerCommand(settings(), env([], { platform: 'win32' })).command, 'python');
});

test('pythonPath wins over the checkout venv and expands ~ and ${userHome}', () => {
    const e = env(['/src/nextword/.venv/bin/python']);
    assert.equal(resolveServerCommand(settings({ pythonPath: '~/venvs/nw/bin/python' }), e).command, '/home/ann/venvs/nw/bin/python');
    assert.equal(resolveServerCommand(settings({ pythonPath: '${userHome}/py' }), e).command, '/home/ann/py');
    const cmd = resolveServerCommand(settings({ pythonPath: '  /usr/bin/python3.12 ' }), e);
    assert.equal(cmd.command, '/usr/bin/python3.12');
    assert.equal(cmd.origin, 'nextword.pythonPath');
});

test('serverCommand wins over everything and is used verbatim (after expansion)', () => {
    const cmd = resolveServerCommand(
        settings({ pythonPath: '/usr/bin/python3', serverCommand: ['${workspaceFolder}/bin/nextword', 'serve', '--stdio', ''] }),
        env(),
    );
    assert.equal(cmd.command, '/home/ann/notes/bin/nextword');
    assert.deepEqual(cmd.args, ['serve', '--stdio']);
    assert.equal(cmd.python, undefined);
    assert.equal(cmd.origin, 'nextword.serverCommand');
});

test('an empty serverCommand falls back to Python', () => {
    assert.equal(resolveServerCommand(settings({ serverCommand: ['', ' '] }), env()).origin, 'default');
});

test('server settings: defaults leave modelPath and dtype to the server', () => {
    assert.deepEqual(serverSettings(settings(), env()), {
        device: 'auto',
        maxSuggestions: 5,
        languages: ['markdown', 'plaintext'],
        maxContextTokens: 1024,
        maxSessions: 8,
        inline: true,
        cacheModel: 'document',
    });
});

test('server settings: cache model and adapter', () => {
    const s = serverSettings(settings({ cacheModel: 'workspace', adapterPath: '~/mine.adapter.safetensors' }), env());
    assert.equal(s.cacheModel, 'workspace');
    assert.equal(s.adapterPath, '/home/ann/mine.adapter.safetensors');
    assert.equal(serverSettings(settings({ cacheModel: 'everything' }), env()).cacheModel, 'document');
});

test('server settings: values are forwarded, paths made absolute, numbers clamped', () => {
    const s = serverSettings(
        settings({ modelPath: 'models/mine.safetensors', device: 'cuda', dtype: 'bfloat16', maxSuggestions: 500, maxContextTokens: 3, inline: false, languages: ['markdown', ''] }),
        env(),
    );
    assert.deepEqual(s, {
        modelPath: '/home/ann/notes/models/mine.safetensors',
        device: 'cuda',
        dtype: 'bfloat16',
        maxSuggestions: 10,
        languages: ['markdown'],
        maxContextTokens: 64,
        maxSessions: 8,
        inline: false,
        cacheModel: 'document',
    });
    assert.equal(serverSettings(settings({ modelPath: '~/m.safetensors' }), env()).modelPath, '/home/ann/m.safetensors');
    assert.equal(serverSettings(settings({ maxSuggestions: Number.NaN }), env()).maxSuggestions, 5);
});

test('expandPath leaves ${workspaceFolder} alone when no folder is open', () => {
    assert.equal(expandPath('${workspaceFolder}/x', { homeDir: '/h', workspaceFolder: undefined }), '${workspaceFolder}/x');
});

test('document selector covers files and unsaved documents of each language', () => {
    const selector = documentSelector(['markdown']);
    assert.ok(selector.some((s) => s.scheme === 'file' && s.language === 'markdown'));
    assert.ok(selector.some((s) => s.scheme === 'untitled' && s.language === 'markdown'));
    assert.equal(documentSelector([]).length, 0);
});

test('formatCommand quotes parts with spaces', () => {
    assert.equal(
        formatCommand({ command: '/My Python/python', args: ['-m', 'nextword'], origin: 'nextword.pythonPath' }),
        '"/My Python/python" -m nextword',
    );
});

test('preflight verdicts', () => {
    const probe = (o: object) => interpretProbe('py', 'some warning\n' + JSON.stringify(o));
    assert.equal(probe({ version: '3.11.7', package: '/x/nextword', model: '/w.safetensors', modelExists: true }).kind, 'ok');
    assert.equal(probe({ version: '3.9.2', package: null }).kind, 'oldPython');
    assert.equal(probe({ version: '3.12.1', package: null }).kind, 'noPackage');
    const missing = probe({ version: '3.12.1', package: '/x/nextword', model: '/w.safetensors', modelExists: false });
    assert.deepEqual(missing, { kind: 'noWeights', python: 'py', model: '/w.safetensors' });
    assert.equal(probe({ version: '3.12.1', package: '/x/nextword', model: null }).kind, 'ok');
    assert.equal(interpretProbe('py', 'not json').kind, 'unknown');
});
