/*
 * pinrelay web messenger: small DOM helpers shared by its modules.
 */

export const $ = (id) => document.getElementById(id);

/** An element with properties, attributes (data-, aria-, role, type) and children. */
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "className") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role" || k === "type") {
      node.setAttribute(k, v);
    } else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// A render replaces lists: the focused control is found again by its data-focus key.
export function focusKey() {
  const a = document.activeElement;
  return a && a.dataset ? a.dataset.focus : undefined;
}

export function restoreFocus(key) {
  if (!key) return;
  const again = document.querySelector(`[data-focus="${CSS.escape(key)}"]`);
  if (again) again.focus();
}

/**
 * After an action that may have hidden the focused control (a button that acted on
 * itself, a form that is no longer needed): the first visible of ``selectors`` gets
 * the focus, so a keyboard user is not sent back to the top of the page.
 */
export function refocus(...selectors) {
  const a = document.activeElement;
  if (a && a !== document.body && a.getClientRects().length > 0) return;
  for (const s of selectors) {
    const found = document.querySelector(s);
    if (found && found.getClientRects().length > 0) {
      found.focus();
      return;
    }
  }
}

export function time(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}
