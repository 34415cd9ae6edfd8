/// The Python side of a warm template (`_sandpit_warm`, loaded by warm.c before any
/// import): `preload` runs once in the template; `run` runs in each run's program
/// process, after every step of the sandbox, and turns the forked interpreter into
/// what `python3 -s /work/main.py ARGS` would have been: its own `__main__`, argv,
/// environment, standard streams, signal dispositions, `sys.path[0]`, fresh random
/// state — then runs the file and exits as python3 would (exit code, traceback,
/// atexit handlers, non-daemon threads joined, streams flushed).
///
/// This is the one piece of Python that waits inside a sandbox for code; sessions
/// will call the same `run` steps once per execution.
enum WarmAgent {
    static let source = #"""
import atexit, builtins, io, os, signal, sys, types

_kept = []  # the template's own standard streams: kept alive, never closed


def preload(names, sock):
    import importlib
    for name in [n for n in names.split(',') if n]:
        importlib.import_module(name)
    tasks = len(os.listdir('/proc/self/task'))
    if tasks != 1:
        raise RuntimeError('%d threads after importing %s: a template must stay single-threaded' % (tasks, names))
    files = set()
    for m in list(sys.modules.values()):
        f = getattr(m, '__file__', None)
        if isinstance(f, str) and f.startswith('/'):
            files.add(f)
    # What the imports made stays where it is: the runs' collector never walks (and so
    # never writes to, and copies) the template's objects.
    import gc
    gc.collect()
    gc.freeze()
    rss = 0
    with open('/proc/self/status') as st:
        for line in st:
            if line.startswith('VmRSS:'):
                rss = int(line.split()[1]) * 1024
    top = sorted({k.split('.')[0] for k in sys.modules if not k.startswith('_sandpit')})
    msg = '\n'.join(['ready', str(rss), ','.join(top), ','.join(sorted(sys.stdlib_module_names))] + sorted(files))
    os.write(sock, msg.encode())


def _stream(fd, name, mode, like, unbuffered):
    # Encoding and errors as the template's own streams (made by the interpreter's
    # start-up under the same LANG as a run's): what python3 would choose.
    enc = getattr(like, 'encoding', None) or 'utf-8'
    errors = getattr(like, 'errors', None) or ('backslashreplace' if fd == 2 else 'surrogateescape')
    raw = io.FileIO(fd, mode, closefd=False)
    raw.name = name
    if mode == 'rb':
        return io.TextIOWrapper(io.BufferedReader(raw), encoding=enc, errors=errors)
    tty = raw.isatty()
    if unbuffered:
        return io.TextIOWrapper(raw, encoding=enc, errors=errors, write_through=True, line_buffering=tty)
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding=enc, errors=errors, line_buffering=tty or fd == 2)


def _code_of(e):
    c = e.code
    if c is None:
        return 0
    if isinstance(c, int):
        return c & 0xff
    try:
        print(c, file=sys.stderr)
    except Exception:
        pass
    return 1


def run(blob):
    head, rest = blob.split(b'\0', 1)
    na, ne = (int(x) for x in head.split())
    items = rest.split(b'\0')
    argv = [os.fsdecode(x) for x in items[:na]]
    # Signals as a fresh interpreter sets them (the init reset every disposition).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(s, signal.SIG_IGN)
    os.environ.clear()
    for e in items[na:na + ne]:
        k, _, v = e.partition(b'=')
        os.environb[k] = v
    i = 1
    while i < len(argv) and argv[i].startswith('-'):
        i += 1
    script = argv[i]
    sys.argv = argv[i:]
    sys.orig_argv = argv
    sys.path.insert(0, os.path.dirname(script))
    _kept.extend([sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__])
    unbuffered = bool(os.environ.get('PYTHONUNBUFFERED'))
    sys.stdin = sys.__stdin__ = _stream(0, '<stdin>', 'rb', _kept[3], False)
    sys.stdout = sys.__stdout__ = _stream(1, '<stdout>', 'wb', _kept[4], unbuffered)
    sys.stderr = sys.__stderr__ = _stream(2, '<stderr>', 'wb', _kept[5], unbuffered)
    # What was seeded when the template imported it would repeat in every run.
    if 'random' in sys.modules:
        sys.modules['random'].seed()
    npr = sys.modules.get('numpy.random')
    if npr is not None:
        # 624 words from the kernel, as seed(None) would draw, without its slower
        # SeedSequence mixing (0.5 ms here).
        import numpy
        npr.seed(numpy.frombuffer(os.urandom(2496), dtype=numpy.uint32))
    tf = sys.modules.get('tempfile')
    if tf is not None:
        # Its names, and the directory it picked from the template's TMPDIR.
        tf._name_sequence = None
        tf.tempdir = None
    main = types.ModuleType('__main__')
    main.__file__ = script
    main.__builtins__ = builtins
    main.__cached__ = None
    sys.modules['__main__'] = main
    code = 0
    try:
        with open(script, 'rb') as f:
            source = f.read()
        exec(compile(source, script, 'exec'), main.__dict__)
    except SystemExit as e:
        code = _code_of(e)
    except BaseException as e:
        # Without this function's frame: the traceback python3 would print.
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        code = 1
        if isinstance(e, KeyboardInterrupt):
            code = -signal.SIGINT
    try:
        if 'threading' in sys.modules:
            sys.modules['threading']._shutdown()
    except BaseException:
        pass
    atexit._run_exitfuncs()
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except BaseException:
            code = code or 120
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)
"""#
}
