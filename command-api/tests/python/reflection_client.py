"""A client that is not this project's: grpcio + grpcio-reflection, no generated code.

Lists the server's services through gRPC reflection, builds `annals.v1.CreateTaskRequest` from
the descriptors the server itself serves, sends it with a bearer token, and prints the result.

    python reflection_client.py HOST:PORT TOKEN TASK_ID COMMAND_ID

Prints `service <name>` per service, then `result <json>`; exits non-zero on any failure.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    target, token, task_id, command_id = sys.argv[1:5]
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=10)

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    for response in responses:
        for service in response.list_services_response.service:
            print(f"service {service.name}")

    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName("annals.v1.TaskCommands").FindMethodByName("CreateTask")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = request_class()
    json_format.ParseDict(
        {
            "envelope": {"commandId": command_id},
            "taskId": task_id,
            "title": "Sent from Python through reflection",
            "tags": ["python", "reflection"],
        },
        request,
    )
    call = channel.unary_unary(
        "/annals.v1.TaskCommands/CreateTask",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    result = call(request, metadata=[("authorization", f"Bearer {token}")], timeout=10)
    print("result " + json.dumps(json_format.MessageToDict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
