"""The live report: the page `premem watch` rewrites after each checkpoint, reloading itself in the browser.

A live page is the plain report plus two blocks, each between LIVE_START and LIVE_END comments:

- in <head>, a small inline script that reloads the page every REFRESH_S seconds while the tab is visible (a
  hidden tab reloads when it is shown again, so a background tab costs nothing), keeping the scroll position
  (saved in sessionStorage, restored once the reloaded page has laid out), and a <noscript> meta refresh for a
  browser with scripts off. A script rather than a bare <meta http-equiv="refresh">: the meta tag reloads hidden
  tabs too and jumps back to the top in some browsers. A page opened from file:// cannot fetch its own file to
  see whether it changed, so it reloads unconditionally; the file is written atomically (a temporary file in the
  same directory renamed over it), so a reload reads the old page or the new one, never half of one;
- at the top of <body>, the banner: "live: updated <UTC time>, last checkpoint <run> step <step>".

`strip_live(page)` removes both blocks, and what is left is byte for byte the page `premem report` writes for
the same store: the plain page holds no time. So a finished run's last live page equals its report, and
build_report(live=False) at the end leaves a page that no longer reloads.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from html import escape

import pandas as pd

from premem.store import ScoreStore

REFRESH_S = 10  # seconds between reloads: checkpoints come minutes apart; a reload redraws a few MB of PNGs
LIVE_START, LIVE_END = "<!-- premem:live -->", "<!-- /premem:live -->"
_BLOCK = re.compile(re.escape(LIVE_START) + ".*?" + re.escape(LIVE_END) + "\n?", re.S)

SCRIPT = """<script>
(function () {
  var period = %(ms)d, key = "premem-live-scroll:" + location.pathname, due = false;
  try {
    var saved = sessionStorage.getItem(key);
    if (saved !== null) {
      sessionStorage.removeItem(key);
      window.addEventListener("load", function () { window.scrollTo(0, Number(saved)); });
    }
  } catch (e) {}  // storage refused (some file:// settings): reload without keeping the scroll position
  function reload() {
    try { sessionStorage.setItem(key, String(window.scrollY)); } catch (e) {}
    location.reload();
  }
  setInterval(function () {
    if (document.visibilityState === "visible") reload(); else due = true;
  }, period);
  document.addEventListener("visibilitychange", function () {
    if (due && document.visibilityState === "visible") reload();
  });
})();
</script>
<noscript><meta http-equiv="refresh" content="%(s)d"></noscript>
"""
STYLE = ("<style>.live { background: #e8f4ea; border-left: 4px solid #2e8b57; padding: 0.4em 0.8em; "
         "font-size: 0.9em; }</style>\n")


def make_live(page: str, store: ScoreStore, now: datetime | None = None) -> str:
    """The plain page with the reload script in its head and the live banner at the top of its body."""
    now = now or datetime.now(timezone.utc)
    head = LIVE_START + SCRIPT % {"ms": REFRESH_S * 1000, "s": REFRESH_S} + STYLE + LIVE_END + "\n"
    last = last_checkpoint(store)
    where = f"last checkpoint {escape(last[0])} step {last[1]}" if last else "no checkpoint scored yet"
    banner = (f'{LIVE_START}<p class="live" id="premem-live">live: updated {now:%Y-%m-%d %H:%M:%S} UTC, {where}; '
              f"this page reloads every {REFRESH_S} s while it is shown.</p>\n{LIVE_END}\n")
    for tag, block in (("</head>", head), ("<body>\n", banner)):
        at = page.index(tag) + (len(tag) if tag == "<body>\n" else 0)
        page = page[:at] + block + page[at:]
    return page


def strip_live(page: str) -> str:
    """A live page less its script and banner: the plain report of the same store."""
    return _BLOCK.sub("", page)


def last_checkpoint(store: ScoreStore) -> tuple[str, int] | None:
    """The checkpoint scored last: the newest part of train_scores (what premem score and watch write per
    checkpoint), else, once compacted, the last row of the table. None when there are no train scores."""
    parts = []
    for name in store.parts("train_scores"):
        try:
            parts.append((store.part_path("train_scores", name).stat().st_mtime_ns, name))
        except OSError:  # compacted away while listing
            continue
    for _, name in sorted(parts, reverse=True):
        try:
            rows = pd.read_parquet(store.part_path("train_scores", name), columns=["run", "step"])
        except (OSError, ValueError):
            continue
        if len(rows):
            return str(rows["run"].iloc[-1]), int(rows["step"].iloc[-1])
    try:  # the run and step columns only: the store was read whole already, and may be large
        rows = pd.read_parquet(store.path("train_scores"), columns=["run", "step"])
    except (OSError, ValueError):
        return None
    return (str(rows["run"].iloc[-1]), int(rows["step"].iloc[-1])) if len(rows) else None
