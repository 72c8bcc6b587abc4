// Imagine console: the few things the server cannot do. No inline scripts
// anywhere (the Content-Security-Policy forbids them); text goes in with
// textContent only.
(function () {
  "use strict";

  // Sentences in the page's language, given by the server on <body>.
  function message(name, values) {
    var text = document.body.getAttribute("data-msg-" + name) || name;
    Object.keys(values || {}).forEach(function (key) {
      text = text.replace("{" + key + "}", values[key]);
    });
    return text;
  }

  function announce(text) {
    var region = document.getElementById("announcer");
    if (!region) return;
    region.textContent = "";
    window.setTimeout(function () { region.textContent = text; }, 50);
  }

  // Copy buttons: data-copy names the element whose text is copied.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(
      function () { announce(message("copied")); button.setAttribute("data-copied", "yes"); },
      function () { announce(message("copy-failed")); }
    );
  });

  // Theme: auto → light → dark, remembered in a cookie the server reads.
  var THEMES = ["auto", "light", "dark"];
  document.addEventListener("click", function (event) {
    var toggle = event.target.closest("[data-theme-toggle]");
    if (!toggle) return;
    var root = document.documentElement;
    var next = THEMES[(THEMES.indexOf(root.getAttribute("data-theme")) + 1) % THEMES.length];
    root.setAttribute("data-theme", next);
    document.cookie = "imagine_theme=" + next + "; path=/; max-age=31536000; samesite=strict";
    var label = document.body.getAttribute("data-theme-" + next) || next;
    var name = toggle.querySelector("[data-theme-name]");
    if (name) name.textContent = label;
    var sentence = message("theme", { name: label });
    toggle.setAttribute("aria-label", sentence);
    announce(sentence);
  });

  // Forms that ask before they act (data-confirm holds the question).
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  }, true);

  // The playground tells the snippet builder how many files are attached.
  document.addEventListener("change", function (event) {
    if (event.target.id !== "image_files") return;
    var count = document.getElementById("image_file_count");
    if (count) count.value = String(event.target.files.length);
  });

  // Status changes of a live task are announced once each.
  var lastStatus = {};
  document.addEventListener("htmx:afterSwap", function () {
    var live = document.getElementById("task-live");
    if (!live) return;
    var task = live.getAttribute("data-task");
    var status = live.getAttribute("data-status");
    if (lastStatus[task] !== status) {
      lastStatus[task] = status;
      announce(message("task", { status: live.getAttribute("data-status-label") || status }));
    }
  });
})();
