"""featurize.quiet: mediapipe imported without importing pyplot, which still works when used."""
from clirun import fresh_python


def test_mediapipe_without_pyplot_until_it_is_used():
    code = ("import sys\n"
            "from featurize.quiet import import_mediapipe\n"
            "mp = import_mediapipe()\n"
            "assert hasattr(mp.solutions, 'face_detection')\n"
            "assert 'matplotlib.figure' not in sys.modules\n"
            "from mediapipe.python.solutions import drawing_utils\n"
            "import matplotlib\n"
            "matplotlib.use('Agg')\n"
            "import matplotlib.pyplot as plt\n"
            "fig = plt.figure()\n"
            "assert drawing_utils.plt.figure is plt.figure\n"
            "assert 'matplotlib.figure' in sys.modules\n"
            "print(type(fig).__name__)\n")
    assert fresh_python(code) == "Figure"


def test_dask_info_lines_stay_off_unless_verbose_even_after_distributed_is_imported():
    """The CLI's quiet default must survive `import distributed` (which sets its loggers from
    dask's config) and reach the workers (they inherit the environment)."""
    from clirun import fresh_python

    code = ("import logging, os\n"
            "os.environ.pop('DASK_LOGGING__DISTRIBUTED', None)\n"
            "from experiments.cli import configure_logging\n"
            "configure_logging({verbose})\n"
            "import distributed\n"
            "print(logging.getLogger('distributed.batched').getEffectiveLevel(), os.environ['DASK_LOGGING__DISTRIBUTED'])")
    assert fresh_python(code.format(verbose=False)) == "30 warning"
    assert fresh_python(code.format(verbose=True)) == "20 info"
