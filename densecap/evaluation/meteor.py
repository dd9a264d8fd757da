"""METEOR 1.5 client: one persistent JVM, batched stdio traffic, per-record sentence scores.

The jar (``meteor-1.5.jar``) and the English paraphrase table (``data/paraphrase-en.gz``) are
the ones the PyPI package ``pycocoevalcap`` ships; the JVM runs exactly as the original DenseCap
and coco-caption ran it: ``java -Xmx2G -jar meteor-1.5.jar - - -stdio -l en -norm``.

The ``-stdio`` protocol (one request per line, one answer line per request, in order)::

    SCORE ||| ref 1 ||| ... ||| ref n ||| candidate    ->  one line of sufficient statistics
    EVAL ||| stats 1 ||| ... ||| stats k               ->  k lines: the sentence score of each
                                                            stats, then one line: the aggregate

A sentence score computed inside a batched ``EVAL`` equals the one a single-stats ``EVAL`` gives
(the original DenseCap bridge sent one ``SCORE`` + one ``EVAL`` per record), so this client sends
``SCORE`` lines in batches, then one ``EVAL`` line per batch. Identical ``(candidate,
references)`` pairs are scored once (a cache lives as long as the scorer). Empty candidates and
records without references score 0 without asking the JVM (the jar answers 0 for them too).

Robustness: no Java -> :class:`JavaNotFoundError` saying what to install; a JVM that exits or stops
answering for ``timeout`` seconds -> :class:`MeteorError` (the JVM is killed, stderr is quoted).
Reading runs in a background thread, so a stalled JVM never hangs the caller.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import shutil
import subprocess
import threading
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

JAVA_INSTALL_HINT = (
    "METEOR (meteor-1.5.jar, shipped by pycocoevalcap) needs a Java runtime and none was found "
    "(looked at the java= argument, $DENSECAP_JAVA, $JAVA_HOME/bin/java and `java` on PATH). "
    "Install one, e.g. `apt-get install default-jre-headless` (Debian/Ubuntu), "
    "`conda install -c conda-forge openjdk`, or `brew install openjdk` (macOS)."
)

METEOR_FLAGS = ("-", "-", "-stdio", "-l", "en", "-norm")

Pair = Tuple[str, Sequence[str]]  # (candidate, references)


class MeteorError(RuntimeError):
    """The METEOR JVM could not be started, died, stalled or answered nonsense."""


class JavaNotFoundError(MeteorError):
    """No Java runtime: the message says what to install."""


def find_java(java: Optional[str] = None) -> str:
    """Path of a ``java`` executable, or :class:`JavaNotFoundError`."""
    candidates: List[str] = []
    if java:
        candidates.append(java)
    if os.environ.get("DENSECAP_JAVA"):
        candidates.append(os.environ["DENSECAP_JAVA"])
    if os.environ.get("JAVA_HOME"):
        candidates.append(os.path.join(os.environ["JAVA_HOME"], "bin", "java"))
    candidates.append("java")
    for c in candidates:
        path = shutil.which(c) if os.path.basename(c) == c else (c if os.access(c, os.X_OK) else None)
        if path:
            return path
    raise JavaNotFoundError(JAVA_INSTALL_HINT)


def meteor_jar() -> str:
    """Path of ``meteor-1.5.jar`` inside pycocoevalcap (checks the paraphrase table too)."""
    try:
        import pycocoevalcap.meteor.meteor as m  # the package dirs have no __init__.py
    except ImportError as e:  # pragma: no cover - pycocoevalcap is a dependency
        raise MeteorError("METEOR needs the `pycocoevalcap` package: pip install pycocoevalcap") from e
    d = os.path.dirname(os.path.abspath(m.__file__))
    jar = os.path.join(d, "meteor-1.5.jar")
    para = os.path.join(d, "data", "paraphrase-en.gz")
    for f, min_size in ((jar, 1 << 20), (para, 1 << 20)):
        if not os.path.isfile(f) or os.path.getsize(f) < min_size:
            raise MeteorError(
                f"{f} is missing or truncated; reinstall pycocoevalcap "
                f"(pip install --force-reinstall pycocoevalcap)"
            )
    return jar


def clean_text(text: str) -> str:
    """What may go on a METEOR stdio line: no ``|||`` field separator, no newlines, single spaces."""
    if not isinstance(text, str):
        text = " ".join(text) if isinstance(text, (list, tuple)) else str(text)
    return " ".join(text.replace("|||", " ").split())


_EOF = object()


class MeteorScorer:
    """Sentence-level METEOR 1.5 with one persistent JVM.

    ``scorer(pairs)`` (= :meth:`score_batch`) maps a list of ``(candidate, references)`` to a
    list of sentence scores in [0, 1]. Use as a context manager or call :meth:`close`.

    Args:
        java: java executable (default: see :func:`find_java`); checked at construction.
        jar: the METEOR jar (default: pycocoevalcap's).
        timeout: seconds the JVM may stay silent while answers are pending before it is
            declared stalled (killed, :class:`MeteorError`).
        startup_timeout: the same for the first answer (the JVM loads the paraphrase table).
        batch_size: ``SCORE`` lines per round trip.
        max_heap: JVM ``-Xmx`` value.
    """

    def __init__(
        self,
        *,
        java: Optional[str] = None,
        jar: Optional[str] = None,
        timeout: float = 120.0,
        startup_timeout: float = 600.0,
        batch_size: int = 1000,
        max_heap: str = "2G",
    ) -> None:
        self.java = find_java(java)
        self.jar = jar or meteor_jar()
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self.batch_size = max(1, int(batch_size))
        self.max_heap = max_heap
        self._proc: Optional[subprocess.Popen] = None
        self._out: "queue.Queue" = queue.Queue()
        self._stderr_tail: "collections.deque[str]" = collections.deque(maxlen=40)
        self._writeq: "queue.Queue" = queue.Queue()
        self._answered = False  # the JVM has answered at least once (paraphrases loaded)
        self._broken: Optional[str] = None
        self._lock = threading.Lock()
        self._cache: Dict[Tuple[str, Tuple[str, ...]], float] = {}
        self.num_jvm_requests = 0  # SCORE lines actually sent (for benchmarks)

    # ---- process management ----------------------------------------------------------------
    @property
    def command(self) -> List[str]:
        return [self.java, f"-Xmx{self.max_heap}", "-Dfile.encoding=UTF-8", "-jar", self.jar, *METEOR_FLAGS]

    def start(self) -> None:
        """Start the JVM now (it is otherwise started by the first request)."""
        if self._proc is not None:
            return
        if self._broken:
            raise MeteorError(self._broken)
        try:
            self._proc = subprocess.Popen(
                self.command,
                cwd=os.path.dirname(os.path.abspath(self.jar)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise MeteorError(f"could not start METEOR ({' '.join(self.command)}): {e}. {JAVA_INSTALL_HINT}") from e
        p = self._proc
        threading.Thread(target=self._read_stdout, args=(p, self._out), daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._read_stderr, args=(p,), daemon=True)
        self._stderr_thread.start()
        threading.Thread(target=self._write_loop, args=(p, self._writeq), daemon=True).start()
        logger.debug("started METEOR: %s", " ".join(self.command))

    @staticmethod
    def _read_stdout(p: subprocess.Popen, out: "queue.Queue") -> None:
        try:
            for line in iter(p.stdout.readline, b""):
                out.put(line)
        except (OSError, ValueError):
            pass
        out.put(_EOF)

    def _read_stderr(self, p: subprocess.Popen) -> None:
        try:
            for line in iter(p.stderr.readline, b""):
                self._stderr_tail.append(line.decode("utf-8", "replace").rstrip())
        except (OSError, ValueError):
            pass

    @staticmethod
    def _write_loop(p: subprocess.Popen, q: "queue.Queue") -> None:
        while True:
            data = q.get()
            if data is None:
                break
            try:
                p.stdin.write(data)
                p.stdin.flush()
            except (OSError, ValueError):  # JVM gone: the reader reports it
                break

    def _fail(self, msg: str) -> "MeteorError":
        self.close(kill=True)
        t = getattr(self, "_stderr_thread", None)
        if t is not None:
            t.join(timeout=2)  # let the last stderr lines arrive
        tail = "\n".join(self._stderr_tail)
        full = f"METEOR failed: {msg}. Command: {' '.join(self.command)}"
        if tail:
            full += f"\nJVM stderr (last lines):\n{tail}"
        self._broken = full
        return MeteorError(full)

    def _send(self, data: str) -> None:
        self._writeq.put(data.encode("utf-8"))

    def _read_lines(self, n: int) -> List[str]:
        lines = []
        for _ in range(n):
            timeout = self.timeout if self._answered else max(self.timeout, self.startup_timeout)
            try:
                item = self._out.get(timeout=timeout)
            except queue.Empty:
                raise self._fail(
                    f"no answer from the JVM within {timeout:.0f} s (stalled); killed it"
                ) from None
            if item is _EOF:
                rc = self._proc.poll() if self._proc is not None else None
                if rc is None and self._proc is not None:
                    try:
                        rc = self._proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        rc = None
                raise self._fail(f"the JVM exited unexpectedly (exit code {rc})")
            self._answered = True
            lines.append(item.decode("utf-8", "replace").strip())
        return lines

    def close(self, kill: bool = False) -> None:
        p, self._proc = self._proc, None
        if p is None:
            return
        self._writeq.put(None)
        try:
            if not kill:
                try:
                    p.stdin.close()
                except OSError:
                    pass
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    kill = True
            if kill or p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        except Exception:  # pragma: no cover - best effort
            pass
        # fresh queues for a possible restart
        self._out = queue.Queue()
        self._writeq = queue.Queue()
        self._answered = False

    def __enter__(self) -> "MeteorScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close(kill=True)
        except Exception:
            pass

    # ---- protocol ----------------------------------------------------------------------------
    @staticmethod
    def _parse_floats(line: str, what: str) -> List[float]:
        try:
            vals = [float(x) for x in line.split()]
        except ValueError:
            vals = []
        if not vals:
            raise MeteorError(f"unexpected {what} line from METEOR: {line[:200]!r}")
        return vals

    def _stats(self, pairs: Sequence[Tuple[str, Sequence[str]]]) -> List[str]:
        """SCORE lines for ``pairs`` (already clean), one stats string each."""
        self.start()
        self._send("".join(f"SCORE ||| {' ||| '.join(refs)} ||| {cand}\n" for cand, refs in pairs))
        self.num_jvm_requests += len(pairs)
        stats = self._read_lines(len(pairs))
        for s in stats:
            self._parse_floats(s, "SCORE statistics")
        return stats

    def _eval(self, stats: Sequence[str]) -> Tuple[List[float], float]:
        self._send("EVAL ||| " + " ||| ".join(stats) + "\n")
        lines = self._read_lines(len(stats) + 1)
        vals = [self._parse_floats(x, "EVAL score")[0] for x in lines]
        return vals[:-1], vals[-1]

    def _score_clean(self, pairs: Sequence[Tuple[str, Tuple[str, ...]]]) -> List[float]:
        out: List[float] = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i: i + self.batch_size]
            scores, _ = self._eval(self._stats(chunk))
            out.extend(scores)
        return out

    @staticmethod
    def normalize_pair(candidate: str, references: Iterable[str]) -> Tuple[str, Tuple[str, ...]]:
        """The cache key: cleaned candidate, cleaned non-empty references without duplicates
        (METEOR keeps the best reference, so duplicates never change a score)."""
        refs: List[str] = []
        seen = set()
        for r in references:
            r = clean_text(r)
            if r and r not in seen:
                seen.add(r)
                refs.append(r)
        return clean_text(candidate), tuple(refs)

    def score_batch(self, pairs: Sequence[Pair]) -> List[float]:
        """Sentence METEOR of each ``(candidate, references)``; 0 for an empty candidate or
        no (non-empty) references."""
        with self._lock:
            if self._broken:
                raise MeteorError(self._broken)
            keys = [self.normalize_pair(c, r) for c, r in pairs]
            todo = []
            seen = set()
            for k in keys:
                if k in self._cache or k in seen:
                    continue
                if not k[0] or not k[1]:
                    self._cache[k] = 0.0
                    continue
                seen.add(k)
                todo.append(k)
            if todo:
                t0 = time.perf_counter()
                scores = self._score_clean(todo)
                self._cache.update(zip(todo, scores))
                logger.debug("METEOR scored %d pairs in %.1f s", len(todo), time.perf_counter() - t0)
            return [self._cache[k] for k in keys]

    __call__ = score_batch

    def score(self, candidate: str, references: Sequence[str]) -> float:
        return self.score_batch([(candidate, references)])[0]

    def corpus_score(self, pairs: Sequence[Pair]) -> Tuple[float, List[float]]:
        """Corpus METEOR exactly as ``pycocoevalcap.meteor.Meteor.compute_score``: one SCORE per
        pair (candidate with ``|||`` removed and double spaces collapsed, references as given),
        then one EVAL over all statistics. Returns ``(aggregate, sentence scores)``. No cache,
        no shortcut for empty text."""
        if not pairs:
            return 0.0, []
        with self._lock:
            if self._broken:
                raise MeteorError(self._broken)
            lines = []
            for cand, refs in pairs:
                cand = cand.replace("|||", "").replace("  ", " ")
                refs = [r for r in refs]
                for t in [cand, *refs]:
                    if "\n" in t or "\r" in t:
                        raise ValueError(f"caption contains a newline: {t!r}")
                lines.append((cand, refs))
            stats: List[str] = []
            for i in range(0, len(lines), self.batch_size):
                stats.extend(self._stats(lines[i: i + self.batch_size]))
            scores, agg = self._eval(stats)
            return agg, scores
