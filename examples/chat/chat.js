// The chat demo: every tab reads and writes one topic, `chat.<room>`.
// Query parameters: url (default ws://<this host or localhost>:7402/ringbus),
// room (default lobby), name (default a random guest name). What a tab has
// shown is kept in localStorage with the cursor (last seq and the store
// epoch): after a reload the page shows it at once and resumes the topic
// from that cursor, so it fetches only what it missed.
import { connect } from '../../client/js/src/index.js';

const params = new URLSearchParams(location.search);
const room = params.get('room') || 'lobby';
const topic = `chat.${room}`;
const url = params.get('url') || `ws://${location.hostname || 'localhost'}:7402/ringbus`;
const name = params.get('name') || `guest${Math.floor(Math.random() * 1000)}`;
const STORE_KEY = `ringbus.chat.${room}`;
const KEEP_MESSAGES_MAX = 200;

const $ = (id) => document.getElementById(id);
const log = $('log');
$('room').textContent = `#${room} as ${name}`;

function load() {
  try {
    const s = JSON.parse(localStorage.getItem(STORE_KEY));
    if (s && Array.isArray(s.messages)) return { seq: s.seq ?? 0, epoch: s.epoch ?? '0', messages: s.messages };
  } catch {
    // a damaged entry starts over
  }
  return { seq: 0, epoch: '0', messages: [] };
}

const saved = load();
function save() {
  saved.messages = saved.messages.slice(-KEEP_MESSAGES_MAX);
  localStorage.setItem(STORE_KEY, JSON.stringify(saved));
}

function render(m) {
  const li = document.createElement('li');
  const seq = document.createElement('span');
  seq.className = 'seq';
  seq.textContent = `#${m.seq}`;
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = m.name;
  li.append(seq, who, document.createTextNode(m.text));
  log.append(li);
  log.scrollTop = log.scrollHeight;
}

function note(text) {
  const li = document.createElement('li');
  li.className = 'note';
  li.textContent = text;
  log.append(li);
}

for (const m of saved.messages) render(m);

const bus = await connect(url, { name: `chat:${name}` });
const status = (s) => ($('status').textContent = s);
status('connected');
bus.on('reconnecting', (e) => status(`reconnecting (attempt ${e.attempt})…`));
bus.on('connected', () => status('connected'));
bus.on('epochChange', () => {
  // The server's store restarted: a new seq space, the old log is history.
  saved.messages = [];
  log.replaceChildren();
  note('the server restarted with a fresh store');
});
bus.on('message', (msg) => {
  if (msg.topic !== topic) return;
  let body;
  try {
    body = msg.json();
  } catch {
    body = { name: '?', text: msg.text() };
  }
  const m = { seq: msg.seq, name: String(body.name ?? '?'), text: String(body.text ?? '') };
  saved.seq = msg.seq;
  saved.epoch = String(bus.epoch);
  saved.messages.push(m);
  save();
  render(m);
});
await bus.add(topic, { cursor: saved.seq, epoch: BigInt(saved.epoch) });
document.body.dataset.ready = 'true';
$('text').disabled = $('send').disabled = false;
$('text').focus();

$('form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  $('text').value = '';
  try {
    await bus.publish(topic, JSON.stringify({ name, text }));
  } catch (e) {
    note(`not sent: ${e.message}`);
  }
});
