"""pytest setup shared by tests/ and the nbmake run over notebooks/.

Notebooks executed by nbmake inherit this process's environment: they run the ``smoke`` profile and
write figures and records to a temporary folder, never into the checkout.
"""

import os
import tempfile


def pytest_configure(config):
    os.environ["CLIPLAB_PROFILE"] = "smoke"
    os.environ["CLIPLAB_OUT"] = tempfile.mkdtemp(prefix="cliplab-test-out-")
