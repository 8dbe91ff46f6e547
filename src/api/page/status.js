// The status page's only script: the Approve forms. On submit it asks for
// the API token once per browser session (kept in sessionStorage, sent as
// a bearer token, forgotten when the daemon refuses it), posts the
// approval to the API and shows the daemon's answer on the page.
'use strict';

(function () {
  var KEY = 'pgrehearse.api-token';

  function show(el, text, kind) {
    el.textContent = text;
    el.className = 'msg ' + kind;
  }

  function approve(form, ev) {
    ev.preventDefault();
    var msg = document.getElementById(form.dataset.msg);
    var button = form.querySelector('button');
    var by = form.elements.by.value.trim();
    if (!by) {
      show(msg, 'Enter who approves (your name) first.', 'error');
      form.elements.by.focus();
      return;
    }
    var token = sessionStorage.getItem(KEY);
    if (!token) {
      token = (window.prompt('API token (the contents of [api] token_file):') || '').trim();
      if (!token) {
        show(msg, 'Not approved: no API token given.', 'error');
        return;
      }
      sessionStorage.setItem(KEY, token);
    }
    button.disabled = true;
    show(msg, 'Approving…', 'pending');
    fetch('api/v1/approvals', {
      method: 'POST',
      cache: 'no-store',
      credentials: 'omit',
      headers: { 'Content-Type': 'application/json', 'Authorization': 'Bearer ' + token },
      body: JSON.stringify({
        target: form.dataset.target,
        plan: form.dataset.plan,
        by: by,
        note: form.elements.note.value
      })
    }).then(function (res) {
      return res.json().catch(function () { return null; }).then(function (data) {
        if (res.status === 201 && data) {
          show(msg, 'Approved: plan ' + data.plan.slice(0, 12) + ' by ' + data.approved_by +
            ' (approval ' + data.approval_id + ', expires ' + data.expires_at + '). Reload the page to see it in the status.', 'ok');
          form.hidden = true;
          return;
        }
        var why = data && data.error ? data.error : res.statusText;
        var text = 'Not approved (HTTP ' + res.status + '): ' + why + (/[.!?]$/.test(why) ? '' : '.');
        if (res.status === 401 || res.status === 403) {
          sessionStorage.removeItem(KEY);
          text += ' The token was forgotten; you will be asked for it again.';
        }
        show(msg, text, 'error');
        button.disabled = false;
      });
    }).catch(function (e) {
      show(msg, 'Not approved: the daemon did not answer (' + e.message + ').', 'error');
      button.disabled = false;
    });
  }

  document.querySelectorAll('form.approve').forEach(function (form) {
    form.addEventListener('submit', function (ev) { approve(form, ev); });
  });
})();
