// The nextword extension: starts `python -m nextword serve --stdio` and configures it. All prediction
// happens in the server; this file only starts it, forwards settings and shows its state.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as vscode from 'vscode';
import {
    CloseAction,
    DidChangeConfigurationNotification,
    ErrorAction,
    ExecuteCommandRequest,
    LanguageClient,
    LanguageClientOptions,
    RevealOutputChannelOn,
    ServerOptions,
    State,
    TransportKind,
} from 'vscode-languageclient/node';
import { preflight, Preflight } from './preflight';
import {
    DEFAULT_SETTINGS,
    Environment,
    NextwordSettings,
    RESTART_SETTINGS,
    ServerCommand,
    documentSelector,
    formatCommand,
    resolveModelPath,
    resolveServerCommand,
    serverSettings,
} from './settings';

const SECTION = 'nextword';
/** Server command (workspace/executeCommand) that tells what the server holds. */
const STATUS_COMMAND = 'nextword.status';

interface ServerStatus {
    model: { path: string; device: string; dtype: string } | null;
    loading?: boolean;
    error: string | null;
}

let manager: ServerManager | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
    manager = new ServerManager(context);
    context.subscriptions.push(
        manager,
        vscode.commands.registerCommand('nextword.restartServer', () => manager?.restart()),
        vscode.commands.registerCommand('nextword.showOutput', () => manager?.output.show(true)),
        vscode.commands.registerCommand('nextword.toggleSuggestions', () => toggleSuggestions()),
        vscode.commands.registerCommand('nextword.statusMenu', () => manager?.statusMenu()),
        vscode.workspace.onDidChangeConfiguration((event) => manager?.onConfigurationChanged(event)),
    );
    // The server (and its model) starts with the first document in one of nextword.languages;
    // activation itself returns at once.
    manager.startWhenNeeded();
}

export async function deactivate(): Promise<void> {
    await manager?.stop();
    manager = undefined;
}

async function toggleSuggestions(): Promise<void> {
    const config = vscode.workspace.getConfiguration(SECTION);
    const enabled = config.get<boolean>('enable', true);
    await config.update('enable', !enabled, vscode.ConfigurationTarget.Global);
    void vscode.window.setStatusBarMessage(`nextword: suggestions ${enabled ? 'off' : 'on'}`, 3000);
}

function readSettings(): NextwordSettings {
    const config = vscode.workspace.getConfiguration(SECTION);
    const get = <K extends keyof NextwordSettings>(key: K): NextwordSettings[K] =>
        config.get<NextwordSettings[K]>(key, DEFAULT_SETTINGS[key]);
    return {
        enable: get('enable'),
        pythonPath: get('pythonPath'),
        serverCommand: get('serverCommand'),
        modelPath: get('modelPath'),
        device: get('device'),
        dtype: get('dtype'),
        maxSuggestions: get('maxSuggestions'),
        languages: get('languages'),
        maxContextTokens: get('maxContextTokens'),
        maxSessions: get('maxSessions'),
        inline: get('inline'),
        cacheModel: get('cacheModel'),
        adapterPath: get('adapterPath'),
    };
}

type Status =
    | { kind: 'stopped' }
    | { kind: 'starting' }
    | { kind: 'loading'; title: string; message?: string; percentage?: number }
    | { kind: 'ready'; detail?: string }
    | { kind: 'error'; message: string };

class ServerManager implements vscode.Disposable {
    readonly output: vscode.LogOutputChannel;
    private readonly statusItem: vscode.StatusBarItem;
    private client: LanguageClient | undefined;
    private status: Status = { kind: 'stopped' };
    private readyDetail: string | undefined;
    private readonly activeProgress = new Map<string, { title: string; message?: string; percentage?: number }>();
    private crashes: number[] = [];
    /** The newest suggest-list request per document (see provideInlineCompletionItems). */
    private readonly pendingCompletions = new Map<string, Promise<unknown>>();
    private busy: Promise<void> = Promise.resolve();
    /** Whether the server was started once (it then runs until the window closes or a stop). */
    private started = false;
    private waitForDocument: vscode.Disposable | undefined;

    constructor(private readonly context: vscode.ExtensionContext) {
        this.output = vscode.window.createOutputChannel('nextword', { log: true });
        this.statusItem = vscode.window.createStatusBarItem('nextword.status', vscode.StatusBarAlignment.Right, 100);
        this.statusItem.name = 'nextword';
        this.render();
    }

    /** Starts the server now if a document of one of the languages is open, else when one opens. */
    startWhenNeeded(): void {
        if (this.started) {
            return;
        }
        const wanted = (document: vscode.TextDocument) => readSettings().languages.includes(document.languageId);
        if (vscode.workspace.textDocuments.some(wanted)) {
            void this.start();
            return;
        }
        this.waitForDocument?.dispose();
        this.waitForDocument = vscode.workspace.onDidOpenTextDocument((document) => {
            if (wanted(document)) {
                void this.start();
            }
        });
    }

    dispose(): void {
        this.waitForDocument?.dispose();
        void this.stop();
        this.statusItem.dispose();
        this.output.dispose();
    }

    private environment(): Environment {
        return {
            extensionPath: this.context.extensionPath,
            workspaceFolder: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath,
            homeDir: os.homedir(),
            platform: process.platform,
            exists: (file) => fs.existsSync(file),
        };
    }

    /** Serialises start/stop/restart so that commands pressed quickly do not interleave. */
    private serial(work: () => Promise<void>): Promise<void> {
        this.busy = this.busy.then(work, work);
        return this.busy;
    }

    start(): Promise<void> {
        if (this.started) {
            return this.busy;
        }
        this.started = true;
        this.waitForDocument?.dispose();
        this.waitForDocument = undefined;
        this.statusItem.show();
        return this.serial(() => this.doStart());
    }

    stop(): Promise<void> {
        return this.serial(() => this.doStop());
    }

    restart(): Promise<void> {
        if (!this.started) {
            return this.start();
        }
        return this.serial(async () => {
            this.log('Restarting the server.');
            this.crashes = [];
            await this.doStop();
            await this.doStart();
        });
    }

    private async doStart(): Promise<void> {
        const settings = readSettings();
        const env = this.environment();
        const command = resolveServerCommand(settings, env);
        this.setStatus({ kind: 'starting' });
        this.log(`Server command (from ${command.origin}): ${formatCommand(command)}`);

        const problem = await this.check(command, settings, env);
        if (problem !== undefined) {
            this.setStatus({ kind: 'error', message: problem });
            return;
        }

        const serverOptions: ServerOptions = {
            command: command.command,
            args: command.args,
            transport: TransportKind.stdio,
            options: { env: { ...process.env, PYTHONUNBUFFERED: '1' }, cwd: env.workspaceFolder },
        };
        const clientOptions: LanguageClientOptions = {
            documentSelector: documentSelector(settings.languages),
            outputChannel: this.output,
            revealOutputChannelOn: RevealOutputChannelOn.Never,
            initializationOptions: serverSettings(settings, env),
            initializationFailedHandler: (error) => {
                this.log(`Initialization failed: ${String(error?.message ?? error)}`);
                return false;
            },
            errorHandler: {
                error: (error, _message, count) => {
                    this.log(`Connection error: ${error.message}`);
                    return { action: (count ?? 0) <= 3 ? ErrorAction.Continue : ErrorAction.Shutdown };
                },
                closed: () => this.onServerClosed(),
            },
            middleware: {
                provideCompletionItem: (document, position, context, token, next) => {
                    if (!readSettings().enable) {
                        return undefined;
                    }
                    const key = document.uri.toString();
                    const result = Promise.resolve(next(document, position, context, token));
                    this.pendingCompletions.set(key, result);
                    const forget = () => {
                        if (this.pendingCompletions.get(key) === result) {
                            this.pendingCompletions.delete(key);
                        }
                    };
                    result.then(forget, forget);
                    return result;
                },
                provideInlineCompletionItems: async (document, position, context, token, next) => {
                    const current = readSettings();
                    if (!(current.enable && current.inline)) {
                        return undefined;
                    }
                    // One keystroke asks for both the suggest list and the ghost text. The server
                    // runs one job per document and a newer request supersedes an older one, so
                    // the ghost-text request would empty the list; it waits for the list instead.
                    const pending = this.pendingCompletions.get(document.uri.toString());
                    if (pending !== undefined) {
                        await Promise.race([pending.catch(() => undefined), new Promise((r) => setTimeout(r, 3000))]);
                        if (token.isCancellationRequested) {
                            return undefined;
                        }
                    }
                    return next(document, position, context, token);
                },
                workspace: {
                    configuration: (params, token, next) => {
                        // Answer for our section with the server's view of the settings (absolute
                        // model path, unset values left out); anything else as VS Code has it.
                        const others = next(params, token);
                        const ours = serverSettings(readSettings(), this.environment());
                        const patch = (values: unknown[]) =>
                            values.map((value, i) => (params.items[i]?.section === SECTION ? ours : value));
                        return Array.isArray(others) ? patch(others) : Promise.resolve(others).then((v) => (Array.isArray(v) ? patch(v) : v));
                    },
                },
                handleWorkDoneProgress: (token, params, next) => {
                    this.onProgress(String(token), params);
                    next(token, params);
                },
            },
        };

        const client = new LanguageClient('nextword', 'nextword', serverOptions, clientOptions);
        this.client = client;
        client.onDidChangeState((event) => {
            // Also after the client restarted a server that stopped.
            if (event.newState === State.Running && this.client === client) {
                void this.afterStart(client);
            }
        });
        try {
            await client.start();
        } catch (error) {
            const message = error instanceof Error ? error.message : String(error);
            this.log(`The server did not start: ${message}`);
            if (this.client === client) {
                this.client = undefined;
            }
            await client.dispose(2000).catch(() => undefined);
            this.fail(`The nextword server did not start (${command.origin}: ${formatCommand(command)}). See the output for its error.`);
            return;
        }
        await this.afterStart(client);
    }

    private async afterStart(client: LanguageClient): Promise<void> {
        const info = client.initializeResult?.serverInfo;
        if (info !== undefined && this.readyDetail === undefined) {
            this.readyDetail = `${info.name}${info.version ? ' ' + info.version : ''}`;
        }
        if (this.status.kind === 'starting' && this.activeProgress.size === 0) {
            if (this.hasStatusCommand(client)) {
                // The server loads its model after `initialized` and reports $/progress; until
                // then it is still starting, unless the model is already there.
                await this.refreshFromServer(client);
            } else {
                this.setReady();
            }
        }
    }

    private hasStatusCommand(client: LanguageClient): boolean {
        return client.initializeResult?.capabilities.executeCommandProvider?.commands.includes(STATUS_COMMAND) ?? false;
    }

    /** Asks the server what it holds (`nextword.status`): the model, or the error that stopped it loading. */
    private async refreshFromServer(client: LanguageClient): Promise<void> {
        let status: ServerStatus | undefined;
        try {
            status = await client.sendRequest(ExecuteCommandRequest.type, { command: STATUS_COMMAND, arguments: [] });
        } catch (error) {
            this.log(`${STATUS_COMMAND} failed: ${error instanceof Error ? error.message : String(error)}`);
        }
        if (client !== this.client || this.activeProgress.size > 0) {
            return;
        }
        if (status?.model) {
            const file = status.model.path.split(/[\\/]/).pop();
            this.readyDetail = `${file} on ${status.model.device} (${status.model.dtype})`;
            this.setReady();
        } else if (status?.error) {
            this.setStatus({ kind: 'error', message: status.error });
        } else if (status === undefined || status === null) {
            this.setReady();
        }
    }

    private async doStop(): Promise<void> {
        const client = this.client;
        this.client = undefined;
        this.activeProgress.clear();
        if (client !== undefined) {
            try {
                await client.stop(3000);
            } catch (error) {
                this.log(`Stopping the server: ${error instanceof Error ? error.message : String(error)}`);
            }
        }
        this.setStatus({ kind: 'stopped' });
    }

    /** Python, package and weights: a clear message for whichever is missing. */
    private async check(command: ServerCommand, settings: NextwordSettings, env: Environment): Promise<string | undefined> {
        const modelPath = resolveModelPath(settings, env);
        if (command.python === undefined) {
            if (modelPath !== undefined && !fs.existsSync(modelPath)) {
                const message = `nextword: the model file ${modelPath} (setting nextword.modelPath) does not exist.`;
                void this.notify(message, ['Open Settings']);
                return message;
            }
            return undefined;
        }
        const result: Preflight = await preflight(command.python, modelPath);
        const python = command.python;
        const setup = 'In a nextword checkout, `make setup` creates .venv with everything installed.';
        switch (result.kind) {
            case 'ok':
                this.log(`Python ${result.version} at ${python}; model ${result.model ?? '(server default)'}`);
                return undefined;
            case 'unknown':
                this.log(`Could not check the Python environment (${result.detail}); starting anyway.`);
                return undefined;
            case 'noPython': {
                const message = `nextword: Python was not found at "${python}" (${command.origin}). Install Python 3.11+ with the nextword package, or set "nextword.pythonPath". ${setup}`;
                void this.notify(message, ['Open Settings', 'Show Output']);
                return message;
            }
            case 'oldPython': {
                const message = `nextword: ${python} is Python ${result.version}; nextword needs 3.11 or newer. Set "nextword.pythonPath" to a newer Python. ${setup}`;
                void this.notify(message, ['Open Settings']);
                return message;
            }
            case 'noPackage': {
                const message = `nextword: the Python at ${python} does not have the nextword package. Run \`${python} -m pip install <path to nextword checkout>\` or set "nextword.pythonPath". ${setup}`;
                void this.notify(message, ['Open Settings', 'Show Output']);
                return message;
            }
            case 'noWeights': {
                const explicit = modelPath !== undefined;
                const message = explicit
                    ? `nextword: the model file ${result.model} (setting nextword.modelPath) does not exist.`
                    : `nextword: the default model is not built yet (${result.model}). Run \`${python} -m nextword weights build\` (or \`make weights\` in the checkout), then "nextword: Restart Server".`;
                void this.notify(message, explicit ? ['Open Settings'] : ['Build Weights', 'Open Settings'], python);
                return message;
            }
        }
    }

    private async notify(message: string, actions: string[], python?: string): Promise<void> {
        this.log(message);
        const choice = await vscode.window.showErrorMessage(message, ...actions);
        if (choice === 'Open Settings') {
            await vscode.commands.executeCommand('workbench.action.openSettings', '@ext:nextword.nextword');
        } else if (choice === 'Show Output') {
            this.output.show(true);
        } else if (choice === 'Build Weights' && python !== undefined) {
            const terminal = vscode.window.createTerminal({ name: 'nextword weights' });
            terminal.show();
            terminal.sendText(`"${python}" -m nextword weights build`);
        }
    }

    private onServerClosed(): { action: CloseAction; message?: string; handled?: boolean } {
        const now = Date.now();
        this.crashes = this.crashes.filter((t) => now - t < 3 * 60 * 1000);
        this.crashes.push(now);
        this.activeProgress.clear();
        if (this.crashes.length <= 3) {
            this.log('The server stopped; restarting it.');
            this.setStatus({ kind: 'starting' });
            return { action: CloseAction.Restart, handled: true };
        }
        const message = 'The nextword server stopped 4 times in 3 minutes and will not be restarted. See "nextword: Show Output"; "nextword: Restart Server" tries again.';
        this.fail(message);
        return { action: CloseAction.DoNotRestart, handled: true };
    }

    private fail(message: string): void {
        this.setStatus({ kind: 'error', message });
        void vscode.window.showErrorMessage(message, 'Show Output', 'Restart Server').then((choice) => {
            if (choice === 'Show Output') {
                this.output.show(true);
            } else if (choice === 'Restart Server') {
                void this.restart();
            }
        });
    }

    private onProgress(token: string, params: { kind: string; title?: string; message?: string; percentage?: number }): void {
        if (params.kind === 'begin') {
            this.activeProgress.set(token, { title: params.title ?? 'Loading', message: params.message, percentage: params.percentage });
        } else if (params.kind === 'report') {
            const entry = this.activeProgress.get(token);
            if (entry !== undefined) {
                entry.message = params.message ?? entry.message;
                entry.percentage = params.percentage ?? entry.percentage;
            }
        } else if (params.kind === 'end') {
            this.activeProgress.delete(token);
        }
        if (this.status.kind === 'stopped') {
            return;
        }
        const current = [...this.activeProgress.values()].pop();
        const client = this.client;
        if (current !== undefined) {
            this.setStatus({ kind: 'loading', ...current });
        } else if (client !== undefined && this.hasStatusCommand(client)) {
            void this.refreshFromServer(client);
        } else if (params.kind === 'end' && params.message && /fail|error/i.test(params.message)) {
            this.setStatus({ kind: 'error', message: `the server reports: ${params.message}` });
        } else {
            this.setReady();
        }
    }

    private setReady(): void {
        this.setStatus({ kind: 'ready', detail: this.readyDetail });
    }

    onConfigurationChanged(event: vscode.ConfigurationChangeEvent): void {
        if (!event.affectsConfiguration(SECTION)) {
            return;
        }
        if (RESTART_SETTINGS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`))) {
            if (this.started) {
                void this.restart();
            } else {
                this.startWhenNeeded();
            }
            return;
        }
        this.render();
        const client = this.client;
        if (client !== undefined && client.state === State.Running) {
            // Push and pull servers alike: the new values in the notification, and a server that
            // asks with workspace/configuration gets the same values from the middleware above.
            const settings = serverSettings(readSettings(), this.environment());
            void client.sendNotification(DidChangeConfigurationNotification.type, { settings: { [SECTION]: settings } });
        }
    }

    async statusMenu(): Promise<void> {
        if (this.status.kind === 'error') {
            this.output.show(true);
            return;
        }
        const enabled = readSettings().enable;
        const items: (vscode.QuickPickItem & { command: string })[] = [
            { label: enabled ? '$(circle-slash) Turn Suggestions Off' : '$(check) Turn Suggestions On', command: 'nextword.toggleSuggestions' },
            { label: '$(debug-restart) Restart Server', command: 'nextword.restartServer' },
            { label: '$(output) Show Output', command: 'nextword.showOutput' },
            { label: '$(gear) Settings', command: 'workbench.action.openSettings' },
        ];
        const pick = await vscode.window.showQuickPick(items, { placeHolder: this.describe() });
        if (pick?.command === 'workbench.action.openSettings') {
            await vscode.commands.executeCommand(pick.command, '@ext:nextword.nextword');
        } else if (pick !== undefined) {
            await vscode.commands.executeCommand(pick.command);
        }
    }

    private setStatus(status: Status): void {
        this.status = status;
        this.render();
    }

    private describe(): string {
        const s = this.status;
        switch (s.kind) {
            case 'stopped':
                return 'nextword: stopped';
            case 'starting':
                return 'nextword: starting the server';
            case 'loading': {
                const pct = s.percentage !== undefined ? ` ${Math.round(s.percentage)}%` : '';
                return `nextword: ${s.title}${pct}${s.message ? ' — ' + s.message : ''}`;
            }
            case 'ready':
                return `nextword: ready${s.detail ? ' — ' + s.detail : ''}${readSettings().enable ? '' : ' (suggestions off)'}`;
            case 'error':
                return `nextword: error — ${s.message}`;
        }
    }

    private render(): void {
        const s = this.status;
        const item = this.statusItem;
        const enabled = readSettings().enable;
        item.backgroundColor = undefined;
        item.command = 'nextword.statusMenu';
        switch (s.kind) {
            case 'stopped':
                item.text = '$(circle-outline) nextword';
                break;
            case 'starting':
                item.text = '$(loading~spin) nextword';
                break;
            case 'loading':
                item.text = `$(loading~spin) nextword${s.percentage !== undefined ? ' ' + Math.round(s.percentage) + '%' : ''}`;
                break;
            case 'ready':
                item.text = enabled ? '$(pencil) nextword' : '$(circle-slash) nextword';
                break;
            case 'error':
                item.text = '$(error) nextword';
                item.backgroundColor = new vscode.ThemeColor('statusBarItem.errorBackground');
                item.command = 'nextword.showOutput';
                break;
        }
        const description = this.describe();
        item.tooltip = `${description}\n\nClick for ${s.kind === 'error' ? 'the output' : 'options'}.`;
        // The end-to-end test waits for this label ("nextword: ready ...").
        item.accessibilityInformation = { label: description };
    }

    private log(message: string): void {
        this.output.info(`[client] ${message}`);
    }
}
