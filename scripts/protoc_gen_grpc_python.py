"""A protoc plugin that runs grpcio-tools' built-in gRPC Python generator for buf.

grpcio-tools ships the generator inside its bundled protoc, not as a `protoc-gen-grpc_python`
executable, and buf cannot call it directly. This plugin receives buf's CodeGeneratorRequest,
hands the already-parsed descriptors to the bundled protoc (`--descriptor_set_in`) and returns
the files it wrote as a CodeGeneratorResponse.
"""

import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = pathlib.Path(scratch)
        descriptors = root / "descriptors.binpb"
        descriptors.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        out = root / "out"
        out.mkdir()
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--descriptor_set_in={descriptors}",
                f"--grpc_python_out={out}",
                *request.file_to_generate,
            ]
        )
        if status != 0:
            response.error = f"grpc_tools.protoc exited with status {status}"
        else:
            for path in sorted(out.rglob("*.py")):
                response.file.add(
                    name=str(path.relative_to(out)), content=path.read_text(encoding="utf-8")
                )
    sys.stdout.buffer.write(response.SerializeToString())


if __name__ == "__main__":
    main()
