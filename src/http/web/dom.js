// Small DOM helpers: element building, announcements for screen readers, and formatting.

export const $ = (id) => document.getElementById(id);

// h('button', {class: 'x', onclick: f, 'aria-label': 'y'}, 'text', child...)
export function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) {
    if (kid !== null && kid !== undefined && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

// Puts `el`'s children in the order of `wanted`, moving only what is out of place (a focused
// element that stays in place keeps its focus), and drops the rest.
export function reconcile(el, wanted) {
  const keep = new Set(wanted);
  for (const child of [...el.children]) if (!keep.has(child)) child.remove();
  wanted.forEach((node, i) => {
    if (el.children[i] !== node) el.insertBefore(node, el.children[i] || null);
  });
}

// Polite announcement through the page's one live region (assistive tech reads it once).
export function announce(text) {
  const region = $('announcer');
  region.textContent = '';
  // A new text node in a later task, so the same sentence twice is announced twice.
  setTimeout(() => { region.textContent = text; }, 50);
}

export const time = (iso) => new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

export function dayKey(iso) {
  const d = new Date(iso);
  return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;
}

export function dayLabel(iso) {
  const d = new Date(iso);
  const today = new Date();
  const yesterday = new Date(Date.now() - 86400000);
  if (dayKey(iso) === dayKey(today.toISOString())) return 'Today';
  if (dayKey(iso) === dayKey(yesterday.toISOString())) return 'Yesterday';
  return d.toLocaleDateString([], { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
}

export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 15) | 64;
  b[8] = (b[8] & 63) | 128;
  const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

// A modal form: `fields` are [{name, label, type?, value?, options?, required?}]. Resolves with the
// values by name, or null when cancelled (Escape or the Cancel button).
export function ask(title, fields, submitLabel = 'OK') {
  return new Promise((resolve) => {
    const inputs = fields.map((f, i) => {
      const id = `ask-${i}`;
      let input;
      if (f.options) {
        input = h('select', { id, name: f.name }, f.options.map(([v, l]) => h('option', { value: v, selected: v === f.value }, l)));
      } else if (f.type === 'textarea') {
        input = h('textarea', { id, name: f.name, rows: 3, required: f.required });
        input.value = f.value || '';
      } else {
        input = h('input', { id, name: f.name, type: f.type || 'text', required: f.required, autocomplete: 'off' });
        input.value = f.value || '';
      }
      return [f, h('label', { for: id }, f.label), input];
    });
    const form = h('form', { method: 'dialog', class: 'ask' },
      h('h2', { id: 'ask-title' }, title),
      inputs.map(([, label, input]) => h('div', { class: 'field' }, label, input)),
      h('div', { class: 'row' },
        h('button', { type: 'button', value: 'cancel', onclick: () => dialog.close('cancel') }, 'Cancel'),
        h('button', { class: 'primary', value: 'ok' }, submitLabel)));
    const dialog = h('dialog', { 'aria-labelledby': 'ask-title' }, form);
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      dialog.close('ok');
    });
    dialog.addEventListener('close', () => {
      const values = {};
      for (const [f, , input] of inputs) values[f.name] = input.value;
      dialog.remove();
      resolve(dialog.returnValue === 'ok' ? values : null);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}
