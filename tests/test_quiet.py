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
