"""Build script: compiles the Cython kernels in kernels/ into segsrv._kernels.*.

Portable by default: no -march=native. The fast instruction paths (POPCNT,
AVX2, AVX-512 VPOPCNTDQ) are compiled as separate functions with gcc target
attributes and chosen at import by runtime CPU dispatch (kernels/popcnt.h).

Environment:
  SEGSRV_NATIVE=1     add -march=native (a non-portable local build)
  SEGSRV_NO_OPENMP=1  build without OpenMP even if the compiler supports it
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

KERNEL_MODULES = ["bitset", "csr"]


def _compiler_supports_openmp() -> bool:
    if os.environ.get("SEGSRV_NO_OPENMP") == "1":
        return False
    cc = os.environ.get("CC", "cc")
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as fh:
            fh.write(src)
        try:
            result = subprocess.run(
                [cc, "-fopenmp", path, "-o", os.path.join(tmp, "t")],
                capture_output=True,
            )
        except OSError:
            return False
        return result.returncode == 0


openmp = _compiler_supports_openmp()
if not openmp:
    print(
        "segsrv: WARNING: OpenMP not available; kernels build single-threaded "
        "(install a compiler with -fopenmp support, e.g. gcc, for parallel kernels)",
        file=sys.stderr,
    )

compile_args = ["-O3", "-fno-strict-aliasing", "-Wno-unused-function"]
link_args = []
if openmp:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")
if os.environ.get("SEGSRV_NATIVE") == "1":
    compile_args.append("-march=native")

extensions = [
    Extension(
        f"segsrv._kernels.{name}",
        [f"kernels/{name}.pyx"],
        include_dirs=[np.get_include(), "kernels"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for name in KERNEL_MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        compile_time_env={"SEGSRV_OPENMP": openmp},
    ),
)
