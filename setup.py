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

KERNEL_MODULES = ["bitset", "csr", "cooccur", "hypergeom", "tables", "wire"]


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


def generate_protos() -> None:
    """proto/segsrv/v1/*.proto -> segsrv/v1/*_pb2.py, *_pb2_grpc.py and .pyi stubs (grpcio-tools' protoc).

    The include root is proto/, which mirrors the package path, so generated modules import
    each other as `segsrv.v1.<name>_pb2`. Generated code is never edited or committed.
    """
    from grpc_tools import protoc

    root = os.path.dirname(os.path.abspath(__file__))
    proto_dir = os.path.join(root, "proto")
    sources = sorted(
        os.path.relpath(os.path.join(d, f), proto_dir)
        for d, _, files in os.walk(os.path.join(proto_dir, "segsrv"))
        for f in files
        if f.endswith(".proto")
    )
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={root}", f"--pyi_out={root}",
            f"--grpc_python_out={root}", *sources]
    cwd = os.getcwd()
    os.chdir(proto_dir)
    try:
        if protoc.main(args) != 0:
            raise SystemExit(f"segsrv: protoc failed on {sources}")
    finally:
        os.chdir(cwd)


generate_protos()
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
native = os.environ.get("SEGSRV_NATIVE") == "1"  # opt-in, non-portable; default builds dispatch at runtime
compile_args += ["-march=native"] if native else []

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
