// redchat in the browser: the public HTTP API and the SSE stream, nothing else.
// User content is only ever inserted as text (textContent), never as HTML.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const GENERAL = '#general';
  const HISTORY_PAGE = 50;
  const store = window.sessionStorage; // the token lives for this tab only, never in a cookie

  const S = {
    token: store.getItem('redchat.token'),
    user: store.getItem('redchat.user') || '',
    convs: new Map(), // key (lower-case) -> conversation
    active: GENERAL,
    es: null,
    lastEventId: '', // the SSE resume id: no gap, no duplicate after a reconnect
    reconnectTimer: 0,
    backoff: 1000,
    everSynced: false,
    gateway: '',
    pending: new Map(), // cid -> a send not acknowledged yet
    ackedToCid: new Map(), // acknowledged id -> cid, until the stream brings the message
    replyTo: null,
    thread: null,
    rooms: new Map(),
    requests: new Map(),
    schedules: new Map(),
    status: null,
    statusTimer: 0,
    bannerTimer: 0,
  };

  // -------------------------------------------------------------------------
  // Small helpers
  // -------------------------------------------------------------------------

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function button(text, onClick, label) {
    const b = el('button', '', text);
    b.type = 'button';
    if (label) b.setAttribute('aria-label', label);
    b.addEventListener('click', onClick);
    return b;
  }

  function randomId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function cmpId(a, b) {
    const [am, as] = a.split('-').map(Number);
    const [bm, bs] = b.split('-').map(Number);
    return am - bm || as - bs;
  }

  function same(a, b) {
    return String(a).toLowerCase() === String(b).toLowerCase();
  }

  function fmtTime(ms) {
    const d = new Date(ms);
    const now = new Date();
    const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    return d.toDateString() === now.toDateString() ? hm : `${d.toLocaleDateString()} ${hm}`;
  }

  function fmtDuration(seconds) {
    seconds = Math.max(0, Math.ceil(seconds));
    if (seconds < 60) return `${seconds} s`;
    const minutes = Math.ceil(seconds / 60);
    if (minutes < 60) return `${minutes} min`;
    const h = Math.floor(minutes / 60);
    const m = minutes % 60;
    return m ? `${h} h ${m} min` : `${h} h`;
  }

  function fmtSize(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  // -------------------------------------------------------------------------
  // The HTTP API
  // -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, body) {
      super(message);
      this.status = status;
      this.code = code;
      this.body = body || {};
      this.retryAfter = this.body.retry_after;
      this.until = this.body.until;
    }
    get transient() {
      return this.status === 0 || this.status === 502 || this.status === 503 || this.status === 504;
    }
  }

  async function api(method, path, body) {
    const headers = {};
    if (S.token) headers.Authorization = `Bearer ${S.token}`;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch {
      throw new ApiError(0, 'network', 'no connection to the server');
    }
    let data = null;
    try {
      data = await resp.json();
    } catch {
      data = null;
    }
    if (!resp.ok) {
      const err = new ApiError(
        resp.status,
        (data && data.code) || `http_${resp.status}`,
        (data && data.message) || resp.statusText,
        data,
      );
      const header = Number(resp.headers.get('Retry-After'));
      if (!err.retryAfter && header) err.retryAfter = header;
      if (resp.status === 401 && S.token && path !== '/connect') sessionEnded('Your session ended; please log in again.');
      throw err;
    }
    return data;
  }

  const query = (params) => new URLSearchParams(params).toString();

  // -------------------------------------------------------------------------
  // Banner: connection state and errors, said plainly
  // -------------------------------------------------------------------------

  function describe(err) {
    const code = err.code;
    if (code === 'rate_limited') {
      return `You are sending too fast: you can send again in ${fmtDuration(err.retryAfter || 1)}.`;
    }
    if (code === 'banned') {
      if (!err.until) return 'You are banned from sending until an operator lifts it.';
      return `You are banned from sending until ${fmtTime(err.until)} (in ${fmtDuration((err.until - Date.now()) / 1000)}).`;
    }
    if (code === 'unavailable') return 'The chat server is unavailable right now; trying again shortly.';
    if (code === 'network') return 'No connection to the server; trying again.';
    return `${err.message || code}`;
  }

  function showBanner(text, kind, code) {
    $('banner-text').textContent = text;
    $('banner').dataset.kind = kind;
    $('banner').dataset.code = code || '';
    $('banner').hidden = false;
  }

  function hideBanner(onlyKind) {
    if (onlyKind && $('banner').dataset.kind !== onlyKind) return;
    clearInterval(S.bannerTimer);
    $('banner').hidden = true;
    $('banner').dataset.code = '';
  }

  function showError(err) {
    clearInterval(S.bannerTimer);
    showBanner(describe(err), 'error', err.code);
    if (err.code === 'rate_limited' && err.retryAfter) {
      const end = Date.now() + err.retryAfter * 1000;
      S.bannerTimer = setInterval(() => {
        const left = (end - Date.now()) / 1000;
        if (left <= 0) return hideBanner();
        $('banner-text').textContent = `You are sending too fast: you can send again in ${fmtDuration(left)}.`;
      }, 1000);
    }
    if (err.code === 'banned' || err.code === 'rate_limited') refreshStatus();
  }

  function showInfo(text) {
    clearInterval(S.bannerTimer);
    showBanner(text, 'info', 'info');
  }

  function setConn(state, text) {
    const node = $('conn-state');
    node.dataset.state = state;
    node.textContent = text || state;
  }

  // -------------------------------------------------------------------------
  // Conversations
  // -------------------------------------------------------------------------

  function convOf(m) {
    if (m.to.startsWith('#')) return m.to;
    return same(m.to, S.user) ? m.from : m.to;
  }

  function getConv(name) {
    const key = name.toLowerCase();
    let conv = S.convs.get(key);
    if (!conv) {
      conv = {
        key,
        name: name.startsWith('#') ? key : name,
        room: name.startsWith('#'),
        msgs: new Map(),
        oldest: null,
        unread: 0,
        historyLoaded: false,
        noMore: false,
      };
      S.convs.set(key, conv);
      renderConvList();
    }
    return conv;
  }

  const activeConv = () => getConv(S.active);

  function renderConvList() {
    const list = $('conv-list');
    const convs = [...S.convs.values()].sort((a, b) => {
      if (a.key === GENERAL) return -1;
      if (b.key === GENERAL) return 1;
      if (a.room !== b.room) return a.room ? -1 : 1;
      return a.key.localeCompare(b.key);
    });
    list.replaceChildren();
    let total = 0;
    for (const conv of convs) {
      total += conv.unread;
      const li = el('li');
      const b = button('', () => switchTo(conv.name));
      b.dataset.conv = conv.key;
      b.append(el('span', 'name', conv.room ? conv.name : `@ ${conv.name}`));
      const badge = el('span', 'badge', conv.unread ? conv.unread : '');
      badge.setAttribute('aria-label', `${conv.unread} unread`);
      b.append(badge);
      if (conv.key === S.active.toLowerCase()) b.setAttribute('aria-current', 'true');
      li.append(b);
      list.append(li);
    }
    document.title = total ? `(${total}) redchat` : 'redchat';
  }

  function switchTo(name) {
    const conv = getConv(name);
    S.active = conv.name;
    conv.unread = 0;
    $('conv-title').textContent = conv.room ? conv.name : `@ ${conv.name}`;
    if (S.replyTo && S.replyTo.conv !== conv.key) setReply(null);
    renderConvList();
    renderMessages(true);
    renderRoomTools();
    $('sidebar').classList.remove('open');
    $('menu-toggle').setAttribute('aria-expanded', 'false');
    if (!conv.historyLoaded) loadHistory(conv, false);
  }

  function isMine(m) {
    return same(m.from, S.user);
  }

  // A message from the stream, a history page or a thread: shown once, by id.
  function addMessage(m, live) {
    const conv = getConv(convOf(m));
    const known = conv.msgs.get(m.id);
    const cid = S.ackedToCid.get(m.id);
    if (cid) {
      S.ackedToCid.delete(m.id);
      dropPending(cid);
    }
    if (known) {
      if (m.replies !== undefined && m.replies !== known.replies) {
        known.replies = m.replies;
        refreshMessageEl(conv, known);
      }
      return false;
    }
    conv.msgs.set(m.id, m);
    if (!conv.oldest || cmpId(m.id, conv.oldest) < 0) conv.oldest = m.id;
    if (live && m.reply_to && !m.replay) {
      const parent = conv.msgs.get(m.reply_to);
      if (parent) {
        parent.replies = (parent.replies || 0) + 1;
        refreshMessageEl(conv, parent);
      }
    }
    if (S.thread && S.thread.conv === conv.key && m.reply_to === S.thread.id) {
      $('thread-list').append(messageEl(m, false));
    }
    if (conv.key === S.active.toLowerCase()) {
      insertMessageEl(m);
    } else if (live && !isMine(m)) {
      conv.unread += 1;
      renderConvList();
    }
    return true;
  }

  function messageEl(m, withActions = true) {
    const li = el('li', 'msg');
    li.dataset.id = m.id;
    if (isMine(m)) li.classList.add('mine');
    if (m.quote) {
      li.append(el('span', 'quote', `${m.quote.from}: ${m.quote.text}`));
    }
    const time = el('time', 'meta', fmtTime(m.ts || Number(m.id.split('-')[0])));
    time.dateTime = new Date(m.ts || 0).toISOString();
    li.append(time, el('span', 'from', m.from));
    if (m.file) {
      const box = el('span', 'file');
      const f = m.file;
      box.append(button(`Download ${f.name}`, () => download(f), `Download ${f.name}`));
      box.append(el('span', 'meta', fmtSize(f.size)));
      if (/^image\/(png|jpeg|gif|webp)$/.test(f.mime || '')) {
        box.append(button('Show', (e) => preview(f, li, e.currentTarget)));
      }
      li.append(box);
    } else {
      li.append(el('span', 'text', m.text));
    }
    if (m.scheduled) li.append(el('span', 'meta', ' (scheduled)'));
    if (withActions) {
      const actions = el('span', 'actions');
      actions.append(button('Reply', () => setReply(m)));
      const n = m.replies || 0;
      const thread = button(n ? `Thread (${n})` : 'Thread', () => openThread(m));
      thread.className = 'thread';
      actions.append(thread);
      if (!isMine(m)) actions.append(button('Report', () => reportUser(m.from)));
      li.append(actions);
    }
    return li;
  }

  function refreshMessageEl(conv, m) {
    if (conv.key !== S.active.toLowerCase()) return;
    const old = $('messages').querySelector(`li.msg[data-id="${CSS.escape(m.id)}"]`);
    if (old) old.replaceWith(messageEl(m));
  }

  function nearBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  }

  function insertMessageEl(m) {
    const list = $('messages');
    const stick = nearBottom(list) || isMine(m);
    const node = messageEl(m);
    let after = list.lastElementChild;
    while (after && (after.classList.contains('pending') || cmpId(after.dataset.id, m.id) > 0)) {
      after = after.previousElementSibling;
    }
    if (after) after.after(node);
    else list.prepend(node);
    if (stick) list.scrollTop = list.scrollHeight;
  }

  function renderMessages(toBottom) {
    const list = $('messages');
    const conv = activeConv();
    const msgs = [...conv.msgs.values()].sort((a, b) => cmpId(a.id, b.id));
    list.replaceChildren(...msgs.map((m) => messageEl(m)));
    for (const p of S.pending.values()) {
      if (p.conv === conv.key) list.append(p.li);
    }
    $('load-older').hidden = conv.noMore;
    if (toBottom) list.scrollTop = list.scrollHeight;
  }

  async function loadHistory(conv, older) {
    if (conv.loading || (older && conv.noMore)) return;
    conv.loading = true;
    const params = { with: conv.name, limit: HISTORY_PAGE };
    if (older && conv.oldest) params.before = conv.oldest;
    try {
      const page = await api('GET', `/history?${query(params)}`);
      conv.historyLoaded = true;
      if (page.messages.length < HISTORY_PAGE) conv.noMore = true; // the beginning is shown
      const list = $('messages');
      const before = list.scrollHeight;
      const top = list.scrollTop;
      let added = 0;
      for (const m of page.messages) {
        const copy = { ...m };
        delete copy.replay;
        if (conv.msgs.has(m.id)) {
          addMessage(copy, false);
          continue;
        }
        conv.msgs.set(m.id, copy);
        if (!conv.oldest || cmpId(m.id, conv.oldest) < 0) conv.oldest = m.id;
        added += 1;
      }
      if (conv.key === S.active.toLowerCase()) {
        renderMessages(!older);
        if (older && added) list.scrollTop = top + (list.scrollHeight - before);
      }
    } catch (err) {
      if (err.code !== 'not_logged_in') showError(err);
    } finally {
      conv.loading = false;
    }
  }

  // -------------------------------------------------------------------------
  // Sending: a send that fails for lack of a connection is retried, same cid
  // -------------------------------------------------------------------------

  function pendingEl(p) {
    const li = el('li', 'msg mine pending');
    li.dataset.cid = p.cid;
    li.append(el('span', 'meta', 'sending…'), el('span', 'from', S.user), el('span', 'text', p.text));
    return li;
  }

  function dropPending(cid) {
    const p = S.pending.get(cid);
    if (!p) return;
    S.pending.delete(cid);
    clearTimeout(p.timer);
    p.li.remove();
  }

  function sendMessage(text) {
    const conv = activeConv();
    const p = { cid: `w${randomId()}`, conv: conv.key, to: conv.name, text, tries: 0, timer: 0 };
    if (S.replyTo && S.replyTo.conv === conv.key) p.reply_to = S.replyTo.id;
    p.li = pendingEl(p);
    S.pending.set(p.cid, p);
    const list = $('messages');
    list.append(p.li);
    list.scrollTop = list.scrollHeight;
    setReply(null);
    attemptSend(p);
  }

  async function attemptSend(p) {
    clearTimeout(p.timer);
    p.tries += 1;
    const body = { to: p.to, text: p.text, cid: p.cid };
    if (p.reply_to) body.reply_to = p.reply_to;
    try {
      const ack = await api('POST', '/send', body);
      if (!S.pending.has(p.cid)) return;
      p.li.querySelector('.meta').textContent = 'sent';
      const conv = S.convs.get(p.conv);
      if (conv && conv.msgs.has(ack.id)) dropPending(p.cid);
      else S.ackedToCid.set(ack.id, p.cid); // the stream brings it (after a reconnect, too)
      if (S.status && S.status.quota) refreshStatusSoon();
    } catch (err) {
      if (!S.pending.has(p.cid)) return;
      if (err.transient) {
        const wait = Math.min(1000 * 2 ** Math.min(p.tries - 1, 4), 10000);
        p.li.querySelector('.meta').textContent = 'no connection; retrying…';
        p.timer = setTimeout(() => attemptSend(p), wait);
        return;
      }
      failPending(p, err);
    }
  }

  function failPending(p, err) {
    p.li.classList.add('failed');
    const meta = p.li.querySelector('.meta');
    meta.textContent = `not sent (${err.code})`;
    const retry = button('Retry', () => {
      p.li.classList.remove('failed');
      meta.textContent = 'sending…';
      retry.remove();
      discard.remove();
      attemptSend(p);
    });
    const discard = button('Discard', () => dropPending(p.cid));
    p.li.append(retry, discard);
    showError(err);
  }

  function retryWaitingSends() {
    for (const p of S.pending.values()) {
      if (!p.li.classList.contains('failed') && p.tries > 0 && p.timer) attemptSend(p);
    }
  }

  async function scheduleMessage(text, seconds) {
    const conv = activeConv();
    const body = { to: conv.name, text, in: seconds };
    if (S.replyTo && S.replyTo.conv === conv.key) body.reply_to = S.replyTo.id;
    try {
      const ev = await api('POST', '/schedule', body);
      onScheduled(ev);
      setReply(null);
      showInfo(`Scheduled for ${fmtTime(ev.at)} to ${ev.to}.`);
      return true;
    } catch (err) {
      showError(err);
      return false;
    }
  }

  // -------------------------------------------------------------------------
  // Replies and threads
  // -------------------------------------------------------------------------

  function setReply(m) {
    if (!m) {
      S.replyTo = null;
      $('reply-bar').hidden = true;
      return;
    }
    S.replyTo = { conv: convOf(m).toLowerCase(), id: m.id };
    $('reply-text').textContent = `Replying to ${m.from}: ${m.file ? m.file.name : m.text}`;
    $('reply-bar').hidden = false;
    $('composer-text').focus();
  }

  async function openThread(m) {
    const conv = getConv(convOf(m));
    try {
      const ev = await api('POST', '/thread', { with: conv.name, id: m.id });
      S.thread = { conv: conv.key, id: m.id };
      const list = $('thread-list');
      list.replaceChildren(messageEl(ev.message, false));
      for (const r of ev.replies) list.append(messageEl(r, false));
      $('thread-panel').hidden = false;
      $('thread-close').focus();
    } catch (err) {
      showError(err);
    }
  }

  function closeThread() {
    S.thread = null;
    $('thread-panel').hidden = true;
  }

  // -------------------------------------------------------------------------
  // Files: upload with progress (XMLHttpRequest), download through the token
  // -------------------------------------------------------------------------

  function uploadFile(file) {
    const conv = activeConv();
    const cid = `f${randomId()}`;
    const row = el('div', 'upload');
    row.dataset.name = file.name;
    const bar = el('progress');
    bar.max = Math.max(file.size, 1);
    bar.value = 0;
    const state = el('span', 'meta', 'uploading…');
    row.append(el('span', '', file.name), bar, state);
    $('uploads').append(row);
    let tries = 0;
    let xhr = null;
    const stop = button('Cancel', () => {
      if (xhr) xhr.abort();
      row.remove();
    });
    row.append(stop);
    const attempt = () => {
      tries += 1;
      xhr = new XMLHttpRequest();
      const params = { to: conv.name, name: file.name, cid };
      if (file.type) params.mime = file.type;
      xhr.open('POST', `/files?${query(params)}`);
      xhr.setRequestHeader('Authorization', `Bearer ${S.token}`);
      xhr.upload.addEventListener('progress', (e) => {
        if (e.lengthComputable) {
          bar.value = e.loaded;
          state.textContent = `${Math.floor((100 * e.loaded) / Math.max(e.total, 1))}%`;
        }
      });
      xhr.addEventListener('load', () => {
        let body = {};
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          body = {};
        }
        if (xhr.status === 200) {
          bar.value = bar.max;
          state.textContent = 'sent';
          row.dataset.done = 'true';
          stop.remove();
          setTimeout(() => row.remove(), 3000);
          return;
        }
        const err = new ApiError(xhr.status, body.code || `http_${xhr.status}`, body.message || 'upload failed', body);
        if (!err.retryAfter) err.retryAfter = Number(xhr.getResponseHeader('Retry-After')) || undefined;
        if (err.transient && tries < 5) {
          state.textContent = 'retrying…';
          setTimeout(attempt, 1000 * tries);
          return;
        }
        state.textContent = `failed (${err.code})`;
        showError(err);
      });
      xhr.addEventListener('error', () => {
        if (tries < 5) {
          state.textContent = 'no connection; retrying…';
          setTimeout(attempt, 1000 * tries);
        } else {
          state.textContent = 'failed';
          showError(new ApiError(0, 'network', 'no connection to the server'));
        }
      });
      xhr.send(file);
    };
    attempt();
  }

  async function fetchFile(f) {
    let resp;
    try {
      resp = await fetch(`/files/${encodeURIComponent(f.fid)}`, {
        headers: { Authorization: `Bearer ${S.token}` },
      });
    } catch {
      throw new ApiError(0, 'network', 'no connection to the server');
    }
    if (!resp.ok) {
      let body = {};
      try {
        body = await resp.json();
      } catch {
        body = {};
      }
      throw new ApiError(resp.status, body.code || `http_${resp.status}`, body.message || 'download failed', body);
    }
    return resp.blob();
  }

  async function download(f) {
    try {
      const blob = await fetchFile(f);
      const url = URL.createObjectURL(blob);
      const a = el('a');
      a.href = url;
      a.download = f.name;
      a.hidden = true;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      showError(err);
    }
  }

  async function preview(f, li, btn) {
    try {
      const blob = await fetchFile(f);
      const img = el('img', 'preview');
      img.alt = f.name;
      img.src = URL.createObjectURL(blob);
      li.append(img);
      btn.remove();
    } catch (err) {
      showError(err);
    }
  }

  // -------------------------------------------------------------------------
  // Status: who is online, quota, ban
  // -------------------------------------------------------------------------

  async function refreshStatus() {
    clearTimeout(S.statusTimer);
    S.statusTimer = setTimeout(refreshStatus, 20000);
    if (!S.token) return;
    let st;
    try {
      st = await api('GET', '/status');
    } catch {
      return;
    }
    S.status = st;
    const online = $('online-list');
    online.replaceChildren();
    for (const name of st.online || []) {
      const li = el('li');
      if (same(name, S.user)) li.append(el('span', '', `${name} (you)`));
      else li.append(button(name, () => switchTo(name), `Message ${name}`));
      online.append(li);
    }
    $('online-count').textContent = `(${(st.online || []).length})`;
    const q = st.quota;
    if (!q) $('quota').textContent = 'public messages: no limit';
    else {
      let text = `public messages left: ${q.left} of ${q.limit}`;
      if (q.resets_at) text += `; resets in ${fmtDuration((q.resets_at - Date.now()) / 1000)}`;
      $('quota').textContent = text;
    }
    const ban = $('ban-state');
    if (st.banned_until === null || st.banned_until === undefined) {
      ban.textContent = 'not banned';
      ban.dataset.banned = 'false';
    } else {
      ban.dataset.banned = 'true';
      ban.textContent = st.banned_until === 0
        ? 'banned from sending until an operator lifts it'
        : `banned from sending until ${fmtTime(st.banned_until)} (in ${fmtDuration((st.banned_until - Date.now()) / 1000)})`;
    }
  }

  let statusSoon = 0;
  function refreshStatusSoon() {
    clearTimeout(statusSoon);
    statusSoon = setTimeout(refreshStatus, 300);
  }

  // -------------------------------------------------------------------------
  // Rooms, invitations, join requests
  // -------------------------------------------------------------------------

  async function refreshRooms() {
    let ev;
    try {
      ev = await api('POST', '/rooms', {});
    } catch {
      return;
    }
    S.rooms.clear();
    const list = $('room-list');
    list.replaceChildren();
    for (const r of ev.rooms) {
      S.rooms.set(r.room.toLowerCase(), r);
      if (r.member) getConv(r.room);
      else if (!r.private) {
        const li = el('li');
        li.append(el('span', '', `${r.room} (${r.members})`));
        li.append(button('Join', () => joinRoom({ room: r.room }), `Join ${r.room}`));
        list.append(li);
      }
    }
    renderRoomTools();
  }

  function renderRoomTools() {
    const conv = activeConv();
    const room = conv.room && conv.key !== GENERAL ? S.rooms.get(conv.key) : null;
    $('room-tools').hidden = !conv.room || conv.key === GENERAL;
    $('make-link').hidden = !(room && same(room.owner, S.user));
    $('link-out').hidden = true;
    $('members-out').textContent = '';
  }

  async function joinRoom(body) {
    try {
      const ev = await api('POST', '/join', body);
      if (ev.type === 'joined') {
        getConv(ev.room);
        switchTo(ev.room);
        refreshRooms();
      } else if (ev.type === 'pending') {
        showInfo(`You asked to join ${ev.room}; waiting for its owner to approve.`);
      }
    } catch (err) {
      showError(err);
    }
  }

  function renderRequests() {
    const list = $('request-list');
    list.replaceChildren();
    for (const [key, r] of S.requests) {
      const li = el('li');
      li.dataset.room = r.room;
      li.dataset.user = r.user;
      li.append(el('span', '', `${r.user} wants to join ${r.room}`));
      const settle = (op) => async () => {
        try {
          await api('POST', `/${op}`, { room: r.room, user: r.user });
          S.requests.delete(key);
          renderRequests();
        } catch (err) {
          showError(err);
        }
      };
      li.append(button('Approve', settle('approve'), `Approve ${r.user} for ${r.room}`));
      li.append(button('Deny', settle('deny'), `Deny ${r.user} for ${r.room}`));
      list.append(li);
    }
    $('requests-box').hidden = S.requests.size === 0;
  }

  function joinLinkToken(text) {
    const m = /[#&?]join=([^&\s]+)/.exec(text);
    return m ? decodeURIComponent(m[1]) : text.trim();
  }

  // -------------------------------------------------------------------------
  // Scheduled messages
  // -------------------------------------------------------------------------

  function onScheduled(ev) {
    S.schedules.set(ev.sid, ev);
    renderSchedules();
  }

  function renderSchedules() {
    const list = $('schedule-list');
    list.replaceChildren();
    const items = [...S.schedules.values()].sort((a, b) => a.at - b.at);
    for (const s of items) {
      const li = el('li');
      li.dataset.sid = s.sid;
      li.append(el('span', '', `${fmtTime(s.at)} to ${s.to}: ${s.text}`));
      li.append(button('Cancel', async () => {
        try {
          await api('POST', '/cancel', { sid: s.sid });
          S.schedules.delete(s.sid);
          renderSchedules();
        } catch (err) {
          showError(err);
          if (err.code === 'not_found') {
            S.schedules.delete(s.sid);
            renderSchedules();
          }
        }
      }, `Cancel scheduled message to ${s.to}`));
      list.append(li);
    }
    $('schedule-count').textContent = items.length ? `(${items.length})` : '';
  }

  async function refreshSchedules() {
    try {
      const ev = await api('POST', '/schedules', {});
      S.schedules.clear();
      for (const s of ev.items) S.schedules.set(s.sid, s);
      renderSchedules();
    } catch {
      // shown on the next action
    }
  }

  async function reportUser(name, reason) {
    if (reason === undefined) {
      $('report-box').open = true;
      $('sidebar').classList.add('open');
      $('report-user').value = name;
      $('report-reason').focus();
      return;
    }
    try {
      const ev = await api('POST', '/report', { user: name, reason });
      showInfo(ev.counted
        ? `Reported ${ev.user} (${ev.reports} of ${ev.threshold}).`
        : `${ev.user} was already reported by you, or is banned.`);
    } catch (err) {
      showError(err);
    }
  }

  // -------------------------------------------------------------------------
  // The live stream: SSE, resumed with Last-Event-ID; duplicates dropped by id
  // -------------------------------------------------------------------------

  function connectStream() {
    if (S.es) S.es.close();
    clearTimeout(S.reconnectTimer);
    if (!S.token) return;
    setConn('connecting', 'connecting…');
    const params = { token: S.token };
    if (S.lastEventId) params.last_event_id = S.lastEventId;
    const es = new EventSource(`/events?${query(params)}`);
    S.es = es;
    es.onmessage = (e) => {
      if (es !== S.es) return;
      if (e.lastEventId) S.lastEventId = e.lastEventId;
      let ev;
      try {
        ev = JSON.parse(e.data);
      } catch {
        return;
      }
      onEvent(ev);
    };
    es.onerror = () => {
      if (es !== S.es) return;
      if (!$('banner').hidden && $('banner').dataset.code === 'info') hideBanner();
      showBanner('Connection to the chat lost; reconnecting…', 'info', 'disconnected');
      if (es.readyState === EventSource.CLOSED) {
        // refused (not a stream): the browser does not retry; we do, resuming by id
        setConn('offline', 'offline');
        S.reconnectTimer = setTimeout(async () => {
          try {
            await api('GET', '/status');
          } catch (err) {
            if (err.code === 'not_logged_in') return;
          }
          connectStream();
        }, S.backoff);
        S.backoff = Math.min(S.backoff * 2, 15000);
      } else {
        setConn('connecting', 'reconnecting…'); // the browser retries with Last-Event-ID
      }
    };
  }

  function onEvent(ev) {
    switch (ev.type) {
      case 'welcome':
        S.gateway = ev.gateway || '';
        $('conn-state').dataset.gateway = S.gateway;
        $('me').textContent = S.gateway ? `${ev.user} · ${S.gateway}` : ev.user;
        setConn('syncing', 'syncing…');
        break;
      case 'synced': {
        setConn('live', 'live');
        if ($('banner').dataset.code === 'disconnected') hideBanner();
        S.backoff = 1000;
        const first = !S.everSynced;
        S.everSynced = true;
        refreshStatus();
        refreshRooms();
        if (!first) refreshSchedules();
        retryWaitingSends();
        break;
      }
      case 'message':
        addMessage(ev, true);
        break;
      case 'error':
        showError(new ApiError(0, ev.code, ev.message, ev));
        break;
      case 'notice':
        if (ev.sid) {
          S.schedules.delete(ev.sid);
          renderSchedules();
          showInfo(ev.sent
            ? `Your scheduled message to ${ev.to} was sent.`
            : `Your scheduled message to ${ev.to} was not sent: ${ev.reason || ev.code}.`);
        } else {
          showInfo(ev.text);
        }
        break;
      case 'warning':
        if (ev.banned_until) {
          showError(new ApiError(0, 'banned', 'banned', { until: ev.banned_until }));
        } else {
          showInfo(`You were reported (${ev.reports} of ${ev.threshold}); at ${ev.threshold} reports you cannot send for a while.`);
        }
        refreshStatus();
        break;
      case 'join_request':
        S.requests.set(`${ev.room.toLowerCase()}\n${ev.user.toLowerCase()}`, ev);
        renderRequests();
        break;
      case 'joined':
        getConv(ev.room);
        refreshRooms();
        showInfo(`You are now in ${ev.room}.`);
        break;
      case 'left': {
        const key = ev.room.toLowerCase();
        S.convs.delete(key);
        if (S.active.toLowerCase() === key) switchTo(GENERAL);
        renderConvList();
        refreshRooms();
        break;
      }
      case 'scheduled':
        onScheduled(ev);
        break;
      case 'cancelled':
        S.schedules.delete(ev.sid);
        renderSchedules();
        break;
      case 'bye':
        sessionEnded('You were logged out.');
        break;
      default:
        break;
    }
  }

  // -------------------------------------------------------------------------
  // Log in, log out
  // -------------------------------------------------------------------------

  function sessionEnded(text) {
    if (S.es) S.es.close();
    S.es = null;
    store.removeItem('redchat.token');
    store.removeItem('redchat.user');
    if (text) store.setItem('redchat.message', text);
    window.location.replace('/');
  }

  function startApp() {
    $('login-view').hidden = true;
    $('app').hidden = false;
    $('me').textContent = S.user;
    getConv(GENERAL);
    switchTo(GENERAL);
    connectStream();
    refreshSchedules();
    const join = store.getItem('redchat.join');
    if (join) {
      store.removeItem('redchat.join');
      joinRoom({ token: join });
    }
    $('composer-text').focus();
  }

  async function login(e) {
    e.preventDefault();
    const user = $('login-user').value.trim();
    const password = $('login-password').value;
    $('login-error').textContent = '';
    $('login-submit').disabled = true;
    try {
      const ev = await api('POST', '/connect', { user, password });
      S.token = ev.token;
      S.user = ev.user;
      store.setItem('redchat.token', ev.token);
      store.setItem('redchat.user', ev.user);
      $('login-password').value = '';
      startApp();
    } catch (err) {
      $('login-error').textContent = err.code === 'bad_password'
        ? 'Wrong password for that name (or the name is taken).'
        : describe(err);
    } finally {
      $('login-submit').disabled = false;
    }
  }

  async function logout() {
    try {
      await api('POST', '/disconnect', {});
    } catch {
      // the token goes from this tab either way
    }
    sessionEnded('');
  }

  // -------------------------------------------------------------------------
  // Wiring
  // -------------------------------------------------------------------------

  function wire() {
    $('login-form').addEventListener('submit', login);
    $('logout').addEventListener('click', logout);
    $('banner-close').addEventListener('click', () => hideBanner());
    $('menu-toggle').addEventListener('click', () => {
      const open = $('sidebar').classList.toggle('open');
      $('menu-toggle').setAttribute('aria-expanded', String(open));
    });
    $('composer').addEventListener('submit', async (e) => {
      e.preventDefault();
      const box = $('composer-text');
      const text = box.value;
      if (!text.trim()) return;
      const later = Number($('schedule-in').value);
      if (later > 0) {
        if (await scheduleMessage(text, later)) {
          box.value = '';
          $('schedule-in').value = '';
        }
        return;
      }
      box.value = '';
      sendMessage(text);
    });
    $('composer-text').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $('composer').requestSubmit();
      }
    });
    $('load-older').addEventListener('click', () => loadHistory(activeConv(), true));
    $('messages').addEventListener('scroll', () => {
      const conv = activeConv();
      if ($('messages').scrollTop === 0 && conv.historyLoaded && !conv.noMore) loadHistory(conv, true);
    });
    $('reply-cancel').addEventListener('click', () => setReply(null));
    $('thread-close').addEventListener('click', closeThread);
    $('dm-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const name = $('dm-user').value.trim().replace(/^@/, '');
      if (!name) return;
      $('dm-user').value = '';
      switchTo(name);
    });
    $('room-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      let room = $('room-name').value.trim();
      if (!room.startsWith('#')) room = `#${room}`;
      try {
        const ev = await api('POST', '/create_room', { room, private: !$('room-public').checked });
        $('room-name').value = '';
        S.rooms.set(ev.room.toLowerCase(), { room: ev.room, owner: ev.owner, private: ev.private, member: true });
        switchTo(ev.room);
        refreshRooms();
      } catch (err) {
        showError(err);
      }
    });
    $('join-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const text = $('join-name').value.trim();
      $('join-name').value = '';
      if (text.startsWith('#') && !text.includes('join=')) joinRoom({ room: text });
      else joinRoom({ token: joinLinkToken(text) });
    });
    $('report-form').addEventListener('submit', (e) => {
      e.preventDefault();
      reportUser($('report-user').value.trim(), $('report-reason').value.trim());
      $('report-user').value = '';
      $('report-reason').value = '';
    });
    $('make-link').addEventListener('click', async () => {
      try {
        const ev = await api('POST', '/link', { room: activeConv().name });
        const out = $('link-out');
        out.value = `${window.location.origin}/#join=${encodeURIComponent(ev.token)}`;
        out.hidden = false;
        out.focus();
        out.select();
      } catch (err) {
        showError(err);
      }
    });
    $('show-members').addEventListener('click', async () => {
      try {
        const ev = await api('POST', '/members', { room: activeConv().name });
        let text = `Members: ${ev.members.join(', ')}`;
        if (ev.pending && ev.pending.length) text += `; waiting: ${ev.pending.join(', ')}`;
        $('members-out').textContent = text;
      } catch (err) {
        showError(err);
      }
    });
    $('leave-room').addEventListener('click', async () => {
      try {
        await api('POST', '/leave', { room: activeConv().name });
      } catch (err) {
        showError(err);
      }
    });
    $('file-input').addEventListener('change', (e) => {
      for (const f of e.target.files) uploadFile(f);
      e.target.value = '';
    });
    const chat = $('chat');
    let depth = 0;
    chat.addEventListener('dragenter', (e) => {
      if (!e.dataTransfer || ![...e.dataTransfer.types].includes('Files')) return;
      depth += 1;
      chat.classList.add('dragging');
      $('drop-hint').hidden = false;
    });
    chat.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (!depth) {
        chat.classList.remove('dragging');
        $('drop-hint').hidden = true;
      }
    });
    chat.addEventListener('dragover', (e) => e.preventDefault());
    chat.addEventListener('drop', (e) => {
      e.preventDefault();
      depth = 0;
      chat.classList.remove('dragging');
      $('drop-hint').hidden = true;
      for (const f of e.dataTransfer.files) uploadFile(f);
    });
    window.addEventListener('dragover', (e) => e.preventDefault());
    window.addEventListener('drop', (e) => e.preventDefault()); // never navigate to a dropped file
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        if (!$('thread-panel').hidden) closeThread();
        else if (S.replyTo) setReply(null);
        else if ($('sidebar').classList.contains('open')) $('sidebar').classList.remove('open');
        return;
      }
      if (e.altKey && (e.key === 'ArrowUp' || e.key === 'ArrowDown') && S.token) {
        e.preventDefault();
        const keys = [...$('conv-list').querySelectorAll('button')].map((b) => b.dataset.conv);
        const i = keys.indexOf(S.active.toLowerCase());
        const next = keys[(i + (e.key === 'ArrowUp' ? -1 : 1) + keys.length) % keys.length];
        if (next) switchTo(S.convs.get(next).name);
        const b = $('conv-list').querySelector('[aria-current="true"]');
        if (b) b.focus();
      }
    });
    window.addEventListener('online', () => {
      if (S.token && (!S.es || S.es.readyState === EventSource.CLOSED)) connectStream();
      retryWaitingSends();
    });
  }

  function main() {
    wire();
    const hash = window.location.hash;
    if (hash.startsWith('#join=')) {
      store.setItem('redchat.join', joinLinkToken(hash));
      window.history.replaceState(null, '', '/');
    }
    const message = store.getItem('redchat.message');
    if (message) {
      store.removeItem('redchat.message');
      $('login-error').textContent = message;
    }
    if (S.token && S.user) startApp();
    else {
      $('login-join').hidden = !store.getItem('redchat.join');
      $('login-view').hidden = false;
      $('login-user').focus();
    }
  }

  main();
})();
