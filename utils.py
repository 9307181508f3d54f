"""Small helpers every script shares: errors, JSON, logging, checkpoints.

The CS230 template's utils.py, kept in spirit: a user rarely edits it, but it is short enough to read.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time

UMASK = os.umask(0)
os.umask(UMASK)


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2, no traceback."""

    exit_code = 2


class FolderBusy(UserError):
    """Another process holds the folder's lock; a search treats the cell as running elsewhere, not as failed."""

    exit_code = 75  # EX_TEMPFAIL


# set by train.py's launcher of several processes (core/training/distributed.py launch), which holds the run folder's
# lock while they run: the folder where each rank leaves its error for the launcher to say once
RANK_ERRORS = "CS230_RANK_ERRORS"
LAUNCHER_PID = "CS230_LAUNCHER_PID"  # and the pid of the command the user started (status.json's launcher_pid)


def run_cli(main):
    """Run `main()`; turn a UserError into a one-line message and a non-zero exit (a rank started by train.py's
    launcher leaves it to the launcher, which says it once)."""
    try:
        code = main()
    except UserError as e:
        if os.environ.get(RANK_ERRORS):
            path = os.path.join(os.environ[RANK_ERRORS], f"rank{os.environ.get('RANK', '0')}.json")
            write_json(path, {"message": one_line(e), "exit_code": e.exit_code})
        else:
            print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        if "WORLD_SIZE" not in os.environ or os.environ.get("RANK", "0") == "0":  # ranks stop together: 0 says it
            say_interrupted(str(e) or "Ctrl-C")
        sys.exit(130)
    sys.exit(code or 0)


def say_interrupted(reason):
    """One line on stderr, and in the log file when the script keeps one (train.log holds everything printed)."""
    line = f"interrupted ({reason})"
    print(line, file=sys.stderr)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.makeLogRecord({"msg": line, "levelname": "WARNING", "levelno": logging.WARNING}))


def short(value, limit=80):
    """A value as a message shows it: its JSON, cut to `limit` characters (a 10 MB string is not echoed whole)."""
    text = json.dumps(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def one_line(exc, limit=600):
    """The last line of an error message (DataLoader workers wrap errors in a traceback text), its middle cut when
    longer than `limit`: a message quoting a 10 MB value must not print it."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    text = text.removeprefix(f"{UserError.__module__}.UserError: ").removeprefix("UserError: ")
    if len(text) > limit:
        text = f"{text[:limit // 2]} ... ({len(text):,} characters) ... {text[-limit // 4:]}"
    return text


def die_with_parent(signum=signal.SIGKILL):
    """Linux: this process gets `signum` (SIGKILL) when its parent dies, so a killed run or search leaves no orphan
    behind."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def now():
    """The one timestamp format of every record: local time with its UTC offset."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---------------------------------------------------------------- files

@contextlib.contextmanager
def atomic_path(path, also=()):
    """A temp file's path in path's folder to write (by name: writers that take a path); when the block ends without
    an error it becomes `path` (os.replace), so readers never see half a file; with an error it is removed.

    `also`: more names for the same bytes, hard-linked to the one write (a copy where links are not supported) and
    put in place before `path`, so a kill between the two leaves them ahead of `path`, never behind it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    # the writer in the name: what a process killed mid-write leaves is known as such (dead_writers_temp_files)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{writer()}-", suffix=os.path.basename(path))
    os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; results on a shared filesystem must stay readable
    os.close(fd)
    try:
        yield tmp
        for other in also:
            link_into_place(tmp, other)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def pid_space():
    """This machine and PID namespace, as 8 hex digits: a pid means a process only there (a container has its own
    pids, another node of a shared filesystem its own too)."""
    import socket
    import zlib

    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{zlib.crc32(f'{socket.gethostname()}:{namespace}'.encode()):08x}"


PID_SPACE = pid_space()
ABANDONED_S = 3600  # a temp file this old is nobody's write in progress, whoever wrote it


def writer():
    """'<pid>-<pid space>': who writes a temp file, in its name."""
    return f"{os.getpid()}-{PID_SPACE}"


TEMP_NAME = re.compile(r"^\.tmp-(\d+)-([0-9a-f]{8})-|\.tmp-(\d+)-([0-9a-f]{8})$")  # atomic_path's, link_into_place's


def dead_writers_temp_files(folder):
    """The temp files in `folder` that nobody will rename into place: their writer, a process of this machine and
    PID namespace, is gone (a run SIGKILLed mid-write, or its figure helper), or, written elsewhere (another
    container or node), they are ABANDONED_S old. A live writer's are its own."""
    out = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        match = TEMP_NAME.search(name)
        if not match:
            continue
        pid, space = match.group(1) or match.group(3), match.group(2) or match.group(4)  # a prefix, or a suffix
        path = os.path.join(folder, name)
        if (space == PID_SPACE and not process_alive(int(pid))) or older_than(path, ABANDONED_S):
            out.append(path)
    return out


def older_than(path, seconds):
    try:
        return time.time() - os.stat(path).st_mtime > seconds
    except FileNotFoundError:
        return False


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def atomic_write(path, write_fn, mode="w", also=()):
    """write_fn(file) through atomic_path: all of it lands under `path` (and `also`), or nothing does."""
    with atomic_path(path, also) as tmp, open(tmp, mode) as f:
        write_fn(f)
        f.flush()
        os.fsync(f.fileno())  # the data reaches the disk before the name does


def link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


def link_into_place(src, dst):
    """`dst` becomes another name for `src`'s bytes (a copy where links are not supported), atomically: readers see
    the old file or the new one. The temp name is removed whatever happens: when `dst` already names the same file
    (two processes keeping one picture), POSIX rename does nothing and would leave it behind."""
    tmp = f"{dst}.tmp-{writer()}"
    try:
        link_or_copy(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=False))


class DuplicateKey(ValueError):
    pass


def unique_keys(pairs):
    """A JSON object whose keys are all distinct: json.load would keep the last of two silently."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(key)
        obj[key] = value
    return obj


def read_json(path):
    """Read a JSON file; a missing or malformed file, a key given twice in one object, or nesting too deep for
    Python are UserErrors naming the file (and line and column, or the key)."""
    try:
        with open(path) as f:
            return json.load(f, object_pairs_hook=unique_keys)
    except DuplicateKey as e:
        raise UserError(f"{path}: key {short(e.args[0])} appears twice in one object (JSON would keep only the last "
                        f"silently); remove one") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to read") from None
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSON file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def read_json_object(path):
    """The JSON object in `path`, or {} when the file is missing, corrupt or not an object: for records (status,
    history, sessions) that must never stop a run or a table."""
    try:
        data = read_json(path) if os.path.exists(path) else None
    except UserError:
        data = None
    return data if isinstance(data, dict) else {}


def read_json_field(path, key, default):
    """`key` of read_json_object(path), or `default`."""
    return read_json_object(path).get(key, default)


# ---------------------------------------------------------------- logging

def set_logger(log_path=None):
    """Log to the console and, when given, append to `log_path` (train.log keeps every run's output)."""
    logger = logging.getLogger()
    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    console = logging.StreamHandler(sys.stdout)  # stdout: a search sends stderr (errors) to the cell log
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_path:
        fh = logging.FileHandler(log_path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(fh)
    return logger


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(state, path, also=()):
    """Save a checkpoint dict atomically (a killed run never leaves a truncated .pth.tar); `also` names other paths
    for the same bytes (best.pth.tar when the best epoch is the last one: one write, not two)."""
    import torch

    atomic_write(path, lambda f: torch.save(state, f), mode="wb", also=also)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint with weights_only=True: tensors and plain containers, never arbitrary pickles."""
    import torch

    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a corrupt or foreign file: report it, do not crash
        raise UserError(f"{path}: cannot load checkpoint ({type(e).__name__}: {one_line(e)})") from None
