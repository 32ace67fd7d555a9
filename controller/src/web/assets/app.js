// edgefleet dashboard script. The pages are complete without it; this adds live updates
// (one EventSource per page: GET /api/v1/events/stream, the server pushes) and sends the
// forms' changes through the JSON API, with the CSRF header a cookie-authenticated change
// needs. Text from the server is only ever set with textContent, never parsed as HTML.
(function () {
  'use strict';
  var CSRF_HEADER = 'X-Edgefleet-Csrf';
  var perf = { updates: 0, lastApplyMs: 0, maxApplyMs: 0, connectedAt: 0, firstUpdateAt: 0 };
  window.edgefleet = perf;

  function api(method, path, body) {
    var headers = { 'Accept': 'application/json' };
    headers[CSRF_HEADER] = '1';
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    return fetch(path, {
      method: method, headers: headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (r) {
      return r.text().then(function (t) {
        var j = null;
        try { j = t ? JSON.parse(t) : null; } catch (e) { j = null; }
        if (!r.ok) {
          var err = new Error((j && j.error) || ('HTTP ' + r.status + ' ' + t));
          err.status = r.status;
          throw err;
        }
        return j;
      });
    });
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---- forms: errors next to the field the API's message is about -------------------------
  var FIELD_WORDS = {
    apply: [['compose', /compose|service|image|healthcheck|port|volume|yaml|key/], ['target', /target|selector|label/], ['name', /name/]],
    rollout: [['canary', /canary/], ['batch', /batch/], ['soak', /soak/]]
  };
  function pickField(form, kind, msg) {
    var m = msg.toLowerCase();
    var rules = FIELD_WORDS[kind] || [];
    for (var i = 0; i < rules.length; i++) {
      if (rules[i][1].test(m) && form.querySelector('.err[data-for="' + rules[i][0] + '"]')) return rules[i][0];
    }
    return form.getAttribute('data-default-field');
  }
  function clearMessages(form) {
    form.querySelectorAll('.err').forEach(function (e) { e.textContent = ''; });
    form.querySelectorAll('[data-ok]').forEach(function (e) { e.textContent = ''; });
  }
  function showError(form, kind, msg) {
    var field = pickField(form, kind, msg);
    var box = form.querySelector('.err[data-for="' + field + '"]') || form.querySelector('.err');
    if (box) box.textContent = msg;
    var input = form.querySelector('[name="' + field + '"]');
    if (input) input.setAttribute('aria-invalid', 'true');
  }
  function value(form, name) {
    var i = form.querySelector('[name="' + name + '"]');
    return i ? i.value.trim() : '';
  }
  var SUBMIT = {
    apply: function (form) {
      var body = { name: value(form, 'name'), target: value(form, 'target'),
        compose: form.querySelector('[name="compose"]').value };
      return api('POST', '/api/v1/deployments', body).then(function (r) {
        var ok = form.querySelector('[data-ok]');
        var held = r && r.held && r.held.length ? ' (staged: start a rollout to move ' + r.held.length + ' device(s))' : '';
        ok.textContent = r && r.changed ? 'Revision ' + r.revision + ' recorded' + held : 'Unchanged (revision ' + (r && r.revision) + ')';
        setTimeout(function () { location.href = '/deployments/' + encodeURIComponent(body.name); }, 600);
      });
    },
    rollout: function (form) {
      var strategy = {};
      var canary = value(form, 'canary');
      if (canary !== '') strategy.canary = Number(canary);
      ['batch', 'soak'].forEach(function (k) { var v = value(form, k); if (v !== '') strategy[k] = v; });
      var body = { deployment: value(form, 'deployment'), revision: Number(value(form, 'revision')) };
      if (Object.keys(strategy).length) body.strategy = strategy;
      return api('POST', '/api/v1/rollouts', body).then(function (r) {
        location.href = '/rollouts/' + r.id;
      });
    }
  };
  document.querySelectorAll('form[data-api]').forEach(function (form) {
    var kind = form.getAttribute('data-api');
    form.addEventListener('submit', function (ev) {
      ev.preventDefault();
      clearMessages(form);
      form.querySelectorAll('[aria-invalid]').forEach(function (i) { i.removeAttribute('aria-invalid'); });
      var button = form.querySelector('button[type="submit"]');
      if (button) button.disabled = true;
      SUBMIT[kind](form).catch(function (e) { showError(form, kind, e.message); })
        .then(function () { if (button) button.disabled = false; });
    });
  });
  document.querySelectorAll('button[data-control]').forEach(function (b) {
    b.addEventListener('click', function () {
      var box = b.parentNode;
      clearMessages(box);
      var path = '/api/v1/rollouts/' + b.getAttribute('data-rollout') + '/' + b.getAttribute('data-control');
      api('POST', path, {}).then(function (r) {
        box.querySelector('[data-ok]').textContent = b.textContent + ': done';
        if (r && r.id && String(r.id) !== b.getAttribute('data-rollout')) location.href = '/rollouts/' + r.id;
      }).catch(function (e) { box.querySelector('.err[data-for="control"]').textContent = e.message; });
    });
  });

  // ---- live fleet ---------------------------------------------------------------------------
  var STATES = ['online', 'degraded', 'offline', 'drifted', 'updating', 'unknown'];
  function setState(node, state) {
    STATES.forEach(function (s) { node.classList.remove('st-' + s); });
    node.classList.add('st-' + state);
    node.setAttribute('data-state', state);
  }
  function group(parent, key, cls, title, level) {
    var found = null;
    parent.querySelectorAll(':scope > section.group').forEach(function (s) {
      if (s.getAttribute('data-group') === key) found = s;
    });
    if (found) return found;
    var s = el('section', 'group ' + cls);
    s.setAttribute('data-group', key);
    var h = el(level, null, title + ' ');
    h.appendChild(el('span', 'counts'));
    s.appendChild(h);
    parent.appendChild(s);
    return s;
  }
  function newTile(t) {
    var sites = document.getElementById('sites');
    var none = document.getElementById('no-devices');
    if (none) none.remove();
    var site = group(sites, t.site, 'site', 'Site ' + t.site, 'h2');
    var area = group(site, t.site + '\u001f' + t.area, 'area', 'Area ' + t.area, 'h3');
    var line = group(area, t.site + '\u001f' + t.area + '\u001f' + t.line, 'line', 'Line ' + t.line, 'h4');
    var box = line.querySelector('.tiles');
    if (!box) { box = el('div', 'tiles'); line.appendChild(box); }
    var a = el('a', 'tile');
    a.href = '/devices/' + encodeURIComponent(t.id);
    a.setAttribute('data-tile', t.id);
    a.appendChild(el('span', 'id', t.id));
    a.appendChild(el('span', 'state'));
    a.appendChild(el('span', 'rev'));
    box.appendChild(a);
    return a;
  }
  function renderCounts(span, tiles) {
    var by = {};
    tiles.forEach(function (t) { var s = t.getAttribute('data-state') || stateOf(t); by[s] = (by[s] || 0) + 1; });
    span.textContent = '';
    var b = el('b', null, String(tiles.length));
    span.appendChild(b);
    span.appendChild(document.createTextNode(' devices'));
    Object.keys(by).sort().forEach(function (s) {
      span.appendChild(document.createTextNode(' '));
      span.appendChild(el('span', 'count st-' + s, by[s] + ' ' + s));
    });
  }
  function stateOf(node) {
    for (var i = 0; i < STATES.length; i++) if (node.classList.contains('st-' + STATES[i])) return STATES[i];
    return 'unknown';
  }
  function recount() {
    var sites = document.getElementById('sites');
    if (!sites) return;
    sites.querySelectorAll('section.group').forEach(function (g) {
      var span = g.querySelector(':scope > h2 .counts, :scope > h3 .counts, :scope > h4 .counts');
      if (span) renderCounts(span, Array.prototype.slice.call(g.querySelectorAll('.tile')));
    });
    var top = document.querySelector('.toolbar h1 .counts');
    if (top) renderCounts(top, Array.prototype.slice.call(sites.querySelectorAll('.tile')));
  }
  function renderAlarms(alarms) {
    var list = document.getElementById('alarm-list');
    if (!list) return;
    list.textContent = '';
    document.getElementById('alarm-count').textContent = String(alarms.length);
    if (!alarms.length) list.appendChild(el('li', 'none', 'No alarms'));
    alarms.forEach(function (a) {
      var li = el('li', 'sev-' + a.severity);
      li.appendChild(el('span', 'sev', a.severity.toUpperCase()));
      li.appendChild(document.createTextNode(' '));
      var link = el('a', null, a.subject);
      link.href = a.href;
      li.appendChild(link);
      li.appendChild(document.createTextNode(' '));
      li.appendChild(el('span', 'kind', a.kind));
      li.appendChild(document.createTextNode(' '));
      li.appendChild(el('span', 'msg', a.message));
      if (a.since && a.message.indexOf('since') < 0) li.appendChild(el('span', 'since', ' since ' + a.since.slice(11, 19)));
      list.appendChild(li);
    });
  }
  function applyFleet(u) {
    var t0 = performance.now();
    var onFleet = document.body.getAttribute('data-page') === 'fleet';
    var structural = false;
    u.tiles.forEach(function (t) {
      var nodes = document.querySelectorAll('[data-tile="' + CSS.escape(t.id) + '"]');
      if (!nodes.length && onFleet) { nodes = [newTile(t)]; structural = true; }
      nodes.forEach(function (n) {
        if (stateOf(n) !== t.state) structural = true;
        setState(n, t.state);
        var s = n.querySelector('.state');
        if (s) s.textContent = t.text;
        var r = n.querySelector('.rev');
        if (r) r.textContent = t.rev;
      });
    });
    if (onFleet) {
      u.removed.forEach(function (id) {
        document.querySelectorAll('.tile[data-tile="' + CSS.escape(id) + '"]').forEach(function (n) { n.remove(); structural = true; });
      });
      if (structural || u.full) recount();
      renderAlarms(u.alarms);
    }
    var ms = performance.now() - t0;
    perf.updates += 1;
    perf.lastApplyMs = ms;
    perf.maxApplyMs = Math.max(perf.maxApplyMs, ms);
    if (!perf.firstUpdateAt) perf.firstUpdateAt = performance.now();
    var live = document.getElementById('live');
    if (live) live.title = 'last update ' + new Date().toLocaleTimeString();
  }

  // ---- live rollouts ------------------------------------------------------------------------
  function phaseOf(p) { return p && p.phase ? p.phase : 'pending'; }
  function renderRollout(box, v) {
    var st = v.state.state;
    box.textContent = '';
    var p = el('p', 'rstate rs-' + st);
    var s = el('span', 'state', st.toUpperCase());
    s.id = 'rollout-state';
    p.appendChild(s);
    p.appendChild(document.createTextNode(' '));
    p.appendChild(el('span', 'reason', v.state.reason || ''));
    box.appendChild(p);
    var n = Object.keys(v.devices).length;
    var wave = Math.min(v.current_wave + 1, v.waves.length);
    box.appendChild(el('p', 'progress', v.succeeded + ' succeeded · ' + v.failures + ' failed · ' +
      v.in_flight + ' in flight · of ' + n + ' devices · wave ' + wave + ' of ' + v.waves.length));
    if (v.waiting) box.appendChild(el('p', 'waiting', 'waiting: ' + v.waiting));
    var ol = el('ol', 'waves');
    v.waves.forEach(function (w, i) {
      var li = el('li', 'wave' + (i === v.current_wave ? ' current' : ''));
      li.appendChild(el('span', 'wave-name', i === 0 ? 'Wave 1 (canary)' : 'Wave ' + (i + 1)));
      w.forEach(function (d) {
        var ph = phaseOf(v.devices[d]);
        var span = el('span', 'dev ph-' + ph, d + ': ' + ph);
        if (v.devices[d] && v.devices[d].reason) span.title = v.devices[d].reason;
        li.appendChild(span);
      });
      ol.appendChild(li);
    });
    box.appendChild(ol);
  }
  function applyRollouts(u) {
    var box = document.getElementById('rollout-live');
    u.rollouts.forEach(function (v) {
      if (box && box.getAttribute('data-rollout') === String(v.id)) renderRollout(box, v);
      var cell = document.querySelector('[data-rollout-state="' + v.id + '"]');
      if (cell) { cell.textContent = v.state.state.toUpperCase(); cell.className = 'rs-' + v.state.state; }
      var prog = document.querySelector('[data-rollout-progress="' + v.id + '"]');
      if (prog) prog.textContent = v.succeeded + '/' + Object.keys(v.devices).length;
    });
  }

  // ---- the stream ---------------------------------------------------------------------------
  // Closed when the page is hidden: a page kept in the back/forward cache must not hold
  // one of the browser's six connections to the gateway (they would run out after a few
  // navigations); reopened, with a full snapshot, when it is shown again.
  var es = null;
  function connect() {
    if (es) return;
    es = new EventSource('/api/v1/events/stream');
    var live = document.getElementById('live');
    es.onopen = function () {
      perf.connectedAt = performance.now();
      if (live) { live.textContent = 'live'; live.className = 'live on'; }
    };
    es.onerror = function () { if (live) { live.textContent = 'reconnecting'; live.className = 'live off'; } };
    es.addEventListener('fleet', function (e) { applyFleet(JSON.parse(e.data)); });
    es.addEventListener('rollouts', function (e) { applyRollouts(JSON.parse(e.data)); });
  }
  if (document.body.getAttribute('data-role') && window.EventSource) {
    connect();
    window.addEventListener('pagehide', function () { if (es) { es.close(); es = null; } });
    window.addEventListener('pageshow', function (e) { if (e.persisted) connect(); });
  }
})();
