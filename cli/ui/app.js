// The API Tokens page. Plain ES module, no dependencies: it talks only to
// the console that served it (/api/...), which acts with the user's
// kubeconfig credentials. A plaintext token lives only in the answer to a
// create or regenerate request and in the "Your new token" dialog; closing
// the dialog removes it from the page. Nothing is kept in browser storage.

const $ = (selector, root = document) => root.querySelector(selector);

const DAY = 24 * 60 * 60 * 1000;
const UNUSED_AFTER = 30 * DAY;
// setTimeout cannot wait longer than this.
const LONGEST_TIMER = 2 ** 31 - 1;

const state = {
  context: null,
  namespace: '',
  product: '',
  cards: [],
  loaded: false,
  source: null,
  expiryTimer: 0,
  returnFocus: null,
};

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

// ------------------------------------------------------------------ API

class ConsoleError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

async function call(method, path, body) {
  const init = { method, credentials: 'same-origin', cache: 'no-store', headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ConsoleError('Cannot reach the console: is `kubectl apitoken ui` still running?', 'console_down');
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data?.error?.message ?? `The console answered HTTP ${response.status}.`;
    throw new ConsoleError(message, data?.error?.code ?? 'failed');
  }
  return data;
}

function tokenPath(card, action) {
  const base = `/api/tokens/${encodeURIComponent(card.namespace)}/${encodeURIComponent(card.name)}`;
  return action ? `${base}/${action}` : base;
}

// ------------------------------------------------------------- statuses

// The operator's phase, except that a token past its expiresAt shows as
// Expired at once: the proxy refuses it by the clock, so the page does too.
function shownStatus(card, now) {
  const live = card.status === 'Active' || card.status === 'Inactive';
  if (live && card.expiresAt && Date.parse(card.expiresAt) <= now) return 'Expired';
  return card.status;
}

function actionsFor(status) {
  switch (status) {
    case 'Active': return ['copy', 'regenerate', 'deactivate', 'revoke'];
    case 'Inactive': return ['copy', 'regenerate', 'activate', 'revoke'];
    case 'Expired': return ['copy', 'revoke'];
    case 'Revoked': return ['delete'];
    default: return ['revoke'];
  }
}

const ACTION_LABELS = {
  copy: 'Copy',
  regenerate: 'Regenerate',
  activate: 'Activate',
  deactivate: 'Deactivate',
  revoke: 'Revoke',
  delete: 'Delete',
};

// "1000 per 30d: 997 left, renews …" (remaining once the operator has counted).
function limitText(limit) {
  if (!limit) return '';
  const cap = limit.per ? `${limit.requests} per ${limit.per}` : `${limit.requests} for its life`;
  if (limit.remaining == null) return cap;
  const renews = limit.renewsAt ? `, renews ${when(limit.renewsAt, '')}` : '';
  return `${cap}: ${limit.remaining} left${renews}`;
}

function hintsFor(card, status, now) {
  // The operator's own notices first (switched off for being unused, about
  // to be, about to expire), then the guide's best practices.
  const hints = (card.notices ?? []).map((n) => `${n[0].toUpperCase()}${n.slice(1)}.`);
  if (status === 'Revoked') return hints;
  if (!card.expiresAt) {
    hints.push('No expiration: set one when you can, and revoke the token when nothing uses it.');
  }
  const lastSeen = Date.parse(card.lastUsedAt ?? card.createdAt ?? '');
  if ((status === 'Active' || status === 'Inactive') && now - lastSeen > UNUSED_AFTER) {
    hints.push('Not used for 30 days: revoke it if no application needs it any more.');
  }
  return hints;
}

function when(iso, absent) {
  if (!iso) return absent;
  return dateFormat.format(new Date(iso));
}

// ---------------------------------------------------------------- cards

function keyOf(card) {
  return `${card.namespace}/${card.name}`;
}

function render() {
  const now = Date.now();
  const list = $('#cards');
  const visible = state.cards.filter((c) => !state.product || c.product === state.product);
  const wanted = new Set(visible.map(keyOf));
  for (const li of [...list.children]) {
    if (!wanted.has(li.dataset.key)) li.remove();
  }
  let previous = null;
  for (const card of visible) {
    let li = list.querySelector(`li[data-key="${CSS.escape(keyOf(card))}"]`);
    if (!li) {
      li = $('#card').content.firstElementChild.cloneNode(true);
      li.dataset.key = keyOf(card);
    }
    fill(li, card, now);
    // Move only what is out of place: moving a node drops its focus.
    const expected = previous ? previous.nextElementSibling : list.firstElementChild;
    if (expected !== li) list.insertBefore(li, expected);
    previous = li;
  }
  $('#empty').hidden = !state.loaded || visible.length > 0;
  renderProducts();
  scheduleExpiry(now);
}

function fill(li, card, now) {
  const status = shownStatus(card, now);
  const field = (name) => li.querySelector(`[data-field="${name}"]`);
  const showNamespace = state.context?.allNamespaces && !state.namespace;
  field('name').textContent = showNamespace ? `${card.namespace} / ${card.name}` : card.name;
  const badge = field('status');
  badge.textContent = status;
  badge.className = `badge badge-${status.toLowerCase()}`;
  li.classList.toggle('revoked', status === 'Revoked');
  field('prefix').textContent = card.prefix ? `${card.prefix}...` : 'not issued yet';
  field('product').textContent = card.product;
  field('createdAt').textContent = when(card.createdAt, '-');
  field('expiresAt').textContent = when(card.expiresAt, 'Never');
  field('usage').textContent = String(card.usage);
  field('lastUsedAt').textContent = when(card.lastUsedAt, 'Never');
  field('limit').textContent = limitText(card.usageLimit);
  field('limitRow').hidden = !card.usageLimit;
  field('sources').textContent = (card.allowedSources ?? []).join(', ');
  field('sourcesRow').hidden = !(card.allowedSources ?? []).length;
  field('description').textContent = card.description ?? '';
  field('description').hidden = !card.description;
  const hints = field('hints');
  const texts = hintsFor(card, status, now);
  if (hints.dataset.texts !== texts.join('\n')) {
    hints.replaceChildren(...texts.map((t) => Object.assign(document.createElement('li'), { textContent: t })));
    hints.dataset.texts = texts.join('\n');
  }
  hints.hidden = texts.length === 0;
  const actions = actionsFor(status);
  const box = li.querySelector('.actions');
  if (box.dataset.actions !== actions.join(' ')) {
    box.replaceChildren(...actions.map((a) => actionButton(a, card.name)));
    box.dataset.actions = actions.join(' ');
  }
}

function actionButton(action, name) {
  const button = document.createElement('button');
  button.type = 'button';
  button.dataset.action = action;
  button.textContent = ACTION_LABELS[action];
  button.setAttribute('aria-label', `${ACTION_LABELS[action]} ${action === 'copy' ? 'the prefix of ' : ''}${name}`);
  if (action === 'revoke' || action === 'delete') button.className = 'danger-quiet';
  return button;
}

// The next token to pass its expiresAt re-renders the page at that moment.
function scheduleExpiry(now) {
  clearTimeout(state.expiryTimer);
  const next = state.cards
    .filter((c) => c.expiresAt && (c.status === 'Active' || c.status === 'Inactive'))
    .map((c) => Date.parse(c.expiresAt) - now)
    .filter((ms) => ms > 0)
    .reduce((a, b) => Math.min(a, b), Infinity);
  if (next < LONGEST_TIMER) state.expiryTimer = setTimeout(render, next + 50);
}

function renderProducts() {
  const select = $('#product');
  const products = [...new Set(state.cards.map((c) => c.product))].sort();
  if (state.product && !products.includes(state.product)) products.push(state.product);
  const current = [...select.options].slice(1).map((o) => o.value);
  if (current.join('\n') === products.join('\n')) return;
  select.replaceChildren(select.options[0], ...products.map((p) => new Option(p, p)));
  select.value = state.product;
}

function cardOf(button) {
  const key = button.closest('li.card')?.dataset.key;
  return state.cards.find((c) => keyOf(c) === key);
}

// --------------------------------------------------------- live updates

function connect() {
  state.source?.close();
  state.loaded = false;
  state.cards = [];
  render();
  if (!state.namespace && !state.context.allNamespaces) {
    showBanner('Type a namespace to see its tokens.');
    return;
  }
  const source = new EventSource(`/api/events?namespace=${encodeURIComponent(state.namespace)}`);
  state.source = source;
  source.addEventListener('tokens', (event) => {
    hideBanner();
    state.cards = JSON.parse(event.data);
    state.loaded = true;
    render();
  });
  source.addEventListener('problem', (event) => {
    const problem = JSON.parse(event.data);
    showBanner(`${problem.message}. Retrying automatically.`, problem.code);
  });
  source.addEventListener('error', () => {
    if (source !== state.source) return;
    showBanner('Lost the connection to the console: is `kubectl apitoken ui` still running? Retrying.', 'console_down');
    if (source.readyState === EventSource.CLOSED) setTimeout(() => source === state.source && connect(), 3000);
  });
}

function showBanner(message, code = '') {
  const banner = $('#banner');
  const text = document.createElement('span');
  text.textContent = message;
  const retry = document.createElement('button');
  retry.type = 'button';
  retry.textContent = 'Retry now';
  retry.addEventListener('click', connect);
  banner.replaceChildren(text, retry);
  banner.dataset.code = code;
  banner.hidden = false;
}

function hideBanner() {
  $('#banner').hidden = true;
  $('#banner').replaceChildren();
}

function notice(message) {
  $('#notice').textContent = message;
}

// -------------------------------------------------------------- dialogs

function open(dialog, focus) {
  state.returnFocus = document.activeElement;
  const error = dialog.querySelector('[data-error]');
  if (error) error.textContent = '';
  dialog.showModal();
  (focus ?? dialog.querySelector('input, button'))?.focus();
}

// Native modal dialogs make the page behind them inert; this also keeps Tab
// cycling inside the dialog instead of leaving for the browser's toolbar.
function trapFocus(dialog) {
  dialog.addEventListener('keydown', (event) => {
    if (event.key !== 'Tab') return;
    const focusable = [...dialog.querySelectorAll('input, select, button, summary, [tabindex]')]
      .filter((el) => !el.disabled && el.offsetParent !== null);
    if (focusable.length === 0) return;
    const first = focusable[0];
    const last = focusable[focusable.length - 1];
    if (event.shiftKey && document.activeElement === first) {
      last.focus();
      event.preventDefault();
    } else if (!event.shiftKey && document.activeElement === last) {
      first.focus();
      event.preventDefault();
    }
  });
  dialog.addEventListener('close', () => {
    const back = state.returnFocus;
    state.returnFocus = null;
    (back?.isConnected ? back : $('#create')).focus();
  });
  for (const button of dialog.querySelectorAll('[data-close]')) {
    button.addEventListener('click', () => shut(dialog));
  }
}

// Closes a dialog. The token dialog forgets its token here, synchronously:
// the `close` event comes later, as a task of its own.
function shut(dialog) {
  if (dialog.id === 'token-dialog') forgetToken();
  dialog.close();
}

async function submitting(form, work) {
  const submit = form.querySelector('[type="submit"]');
  const label = submit.textContent;
  const error = form.querySelector('[data-error]');
  error.textContent = '';
  submit.disabled = true;
  form.setAttribute('aria-busy', 'true');
  submit.textContent = `${label}…`;
  try {
    await work();
  } catch (e) {
    error.textContent = e.message;
  } finally {
    submit.disabled = false;
    submit.textContent = label;
    form.removeAttribute('aria-busy');
  }
}

// The one place a plaintext token is put on the page.
function showToken(answer, regenerated) {
  const dialog = $('#token-dialog');
  $('#token-title').textContent = regenerated ? 'Your regenerated token' : 'Your new token';
  $('#token-value').textContent = answer.token;
  const secret = `${answer.card.namespace}/${answer.deliverySecret}`;
  const lines = [];
  if (regenerated) {
    lines.push(answer.previousValidUntil
      ? `The previous token keeps working until ${when(answer.previousValidUntil)}.`
      : 'The previous token no longer works.');
  }
  lines.push(answer.revealOnce
    ? `Reveal-once: the delivery Secret ${secret} is removed after the operator's reveal window.`
    : `In-cluster consumers can mount it from the Secret ${secret} (key "token").`);
  $('#token-extra').textContent = lines.join(' ');
  open(dialog, $('#copy-token'));
}

function forgetToken() {
  const value = $('#token-value');
  value.textContent = '';
  value.replaceChildren();
}

function setUpCreate() {
  const dialog = $('#create-dialog');
  const form = $('#create-form');
  $('#scopes').replaceChildren(...state.context.scopes.map((scope) => {
    const label = document.createElement('label');
    label.className = 'check';
    const box = Object.assign(document.createElement('input'), { type: 'checkbox', name: 'scopes', value: scope });
    label.append(box, ` ${scope}`);
    return label;
  }));
  $('#create').addEventListener('click', () => {
    form.reset();
    form.querySelector('details').open = false;
    form.elements.product.value = state.product;
    open(dialog, form.elements.name);
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    const f = form.elements;
    const number = (input) => (input.value === '' ? null : Number(input.value));
    const body = {
      namespace: state.namespace || state.context.namespace,
      name: f.name.value.trim(),
      product: f.product.value.trim(),
      expires: f.expires.value ? new Date(f.expires.value).toISOString() : null,
      description: f.description.value,
      scopes: [...form.querySelectorAll('input[name="scopes"]:checked')].map((b) => b.value),
      rateLimit: number(f.rateLimit),
      burst: number(f.burst),
      revealOnce: f.revealOnce.checked,
      usageLimit: f.usageLimit.value.trim() || null,
      allowSources: f.allowSources.value.split(',').map((s) => s.trim()).filter(Boolean),
    };
    submitting(form, async () => {
      const answer = await call('POST', '/api/tokens', body);
      dialog.close();
      notice(`Token ${answer.card.name} created.`);
      showToken(answer, false);
    });
  });
}

// What the Regenerate dialog says becomes of the current token.
function graceFate(grace) {
  const period = grace.trim();
  return period
    ? `the current one keeps working for ${period}, until the grace period ends`
    : 'the current one stops working at once';
}

function setUpActions() {
  const regenerate = $('#regenerate-dialog');
  const revoke = $('#revoke-dialog');
  const remove = $('#delete-dialog');
  const grace = $('#regenerate-form').elements.grace;
  const sayFate = () => { $('[data-fate]', regenerate).textContent = graceFate(grace.value); };
  grace.addEventListener('input', sayFate);
  let target = null;
  const ask = (dialog, card) => {
    target = card;
    dialog.querySelector('form').reset();
    dialog.querySelector('[data-name]').textContent = card.name;
    const submit = dialog.querySelector('[type="submit"]');
    if (dialog === revoke) submit.disabled = true;
    if (dialog === regenerate) sayFate();
    open(dialog);
  };

  $('#cards').addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    const card = cardOf(button);
    if (!card) return;
    const action = button.dataset.action;
    if (action === 'copy') {
      try {
        await navigator.clipboard.writeText(card.prefix ?? '');
        notice(`Copied the prefix ${card.prefix} of ${card.name} to the clipboard.`);
      } catch {
        notice(`The browser refused the clipboard; the prefix of ${card.name} is ${card.prefix}.`);
      }
    } else if (action === 'regenerate') {
      ask(regenerate, card);
    } else if (action === 'revoke') {
      ask(revoke, card);
    } else if (action === 'delete') {
      ask(remove, card);
    } else {
      button.disabled = true;
      try {
        await call('POST', tokenPath(card, action));
        notice(`Token ${card.name} ${action}d.`);
      } catch (e) {
        showBanner(e.message, e.code);
      } finally {
        button.disabled = false;
      }
    }
  });

  $('#regenerate-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    submitting(form, async () => {
      const answer = await call('POST', tokenPath(target, 'regenerate'), { grace: grace.value });
      regenerate.close();
      notice(`Token ${target.name} regenerated.`);
      showToken(answer, true);
    });
  });

  const confirm = $('#revoke-form').elements.confirm;
  confirm.addEventListener('input', () => {
    $('#revoke-form [type="submit"]').disabled = confirm.value !== target?.name;
  });
  $('#revoke-form').addEventListener('submit', (event) => {
    event.preventDefault();
    if (confirm.value !== target?.name) return;
    submitting(event.currentTarget, async () => {
      await call('POST', tokenPath(target, 'revoke'), { confirm: confirm.value });
      revoke.close();
      notice(`Token ${target.name} revoked.`);
    });
  });

  $('#delete-form').addEventListener('submit', (event) => {
    event.preventDefault();
    submitting(event.currentTarget, async () => {
      await call('DELETE', tokenPath(target));
      remove.close();
      notice(`Token ${target.name} deleted.`);
    });
  });
}

function setUpWhere() {
  const input = $('#namespace');
  $('#namespaces').replaceChildren(...state.context.namespaces.map((ns) => new Option(ns, ns)));
  input.placeholder = state.context.allNamespaces ? 'All namespaces' : state.context.namespace;
  input.value = state.namespace;
  input.addEventListener('change', () => {
    const value = input.value.trim();
    if (value === state.namespace) return;
    state.namespace = value;
    connect();
  });
  $('#where').addEventListener('submit', (event) => event.preventDefault());
  $('#product').addEventListener('change', (event) => {
    state.product = event.target.value;
    render();
  });
}

async function start() {
  for (const dialog of document.querySelectorAll('dialog')) trapFocus(dialog);
  // Escape (`cancel`) and any other way of closing forget the token too.
  $('#token-dialog').addEventListener('cancel', forgetToken);
  $('#token-dialog').addEventListener('close', forgetToken);
  $('#copy-token').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText($('#token-value').textContent);
      notice('Token copied to the clipboard.');
    } catch {
      notice('The browser refused the clipboard: select the token and copy it.');
    }
  });
  try {
    state.context = await call('GET', '/api/context');
  } catch (e) {
    showBanner(e.message, e.code);
    return;
  }
  state.namespace = state.context.allNamespaces ? '' : state.context.namespace;
  setUpWhere();
  setUpCreate();
  setUpActions();
  connect();
}

start();
