// The retry policy against an in-process fake server whose Count fails a given number of times:
// UNAVAILABLE is sent again (up to maxAttempts), other codes are not, and {retry: false} sends
// once. Needs no segsrv server.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, it } from "node:test";
import { Server, ServerCredentials, status, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";
import {
  type CountRequest,
  type CountResponse,
  SegmentationServiceService,
  SegsrvClient,
  SegsrvError,
  SERVICE_CONFIG,
} from "../src";

// compiled to dist/test/: the contract is proto/ at the repository root (five levels up)
const CONTRACT = resolve(__dirname, "..", "..", "..", "..", "proto", "segsrv", "v1", "segsrv_grpc_service_config.json");

async function withFlaky(
  failures: number,
  code: status,
  run: (target: string) => Promise<void>,
): Promise<number> {
  let attempts = 0;
  const server = new Server();
  const unimplemented = (_call: unknown, callback: sendUnaryData<unknown>) =>
    callback({ code: status.UNIMPLEMENTED, details: "not in the fake" });
  const impl: Record<string, unknown> = {};
  for (const name of Object.keys(SegmentationServiceService)) impl[name] = unimplemented;
  impl.count = (call: ServerUnaryCall<CountRequest, CountResponse>, callback: sendUnaryData<CountResponse>) => {
    attempts += 1;
    if (attempts <= failures) {
      callback({ code, details: `attempt ${attempts} fails` });
      return;
    }
    callback(null, { universe: call.request.universe, rowCount: 3000, count: 3000 } as CountResponse);
  };
  server.addService(SegmentationServiceService, impl as never);
  const port = await new Promise<number>((ok, fail) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? fail(err) : ok(p))),
  );
  try {
    await run(`127.0.0.1:${port}`);
  } finally {
    server.forceShutdown();
  }
  return attempts;
}

describe("retry", () => {
  it("SERVICE_CONFIG is proto/segsrv/v1/segsrv_grpc_service_config.json", () => {
    assert.deepEqual(SERVICE_CONFIG, JSON.parse(readFileSync(CONTRACT, "utf8")));
  });

  it("UNAVAILABLE is sent again, up to 5 attempts", async () => {
    const attempts = await withFlaky(3, status.UNAVAILABLE, async (target) => {
      const client = new SegsrvClient(target);
      try {
        assert.equal(Number((await client.count("customers")).rowCount), 3000);
      } finally {
        client.close();
      }
    });
    assert.equal(attempts, 4);
  });

  it("stops after 5 attempts with UNAVAILABLE", async () => {
    const attempts = await withFlaky(100, status.UNAVAILABLE, async (target) => {
      const client = new SegsrvClient(target);
      try {
        await assert.rejects(client.count("customers"), (e: unknown) => e instanceof SegsrvError && e.code === status.UNAVAILABLE);
      } finally {
        client.close();
      }
    });
    assert.equal(attempts, 5);
  });

  for (const code of [status.INVALID_ARGUMENT, status.RESOURCE_EXHAUSTED]) {
    it(`${status[code]} is not retried`, async () => {
      const attempts = await withFlaky(1, code, async (target) => {
        const client = new SegsrvClient(target);
        try {
          await assert.rejects(client.count("customers"), (e: unknown) => e instanceof SegsrvError && e.code === code);
        } finally {
          client.close();
        }
      });
      assert.equal(attempts, 1);
    });
  }

  it("{retry: false} sends once", async () => {
    const attempts = await withFlaky(1, status.UNAVAILABLE, async (target) => {
      const client = new SegsrvClient(target, { retry: false });
      try {
        await assert.rejects(client.count("customers"), (e: unknown) => e instanceof SegsrvError && e.code === status.UNAVAILABLE);
      } finally {
        client.close();
      }
    });
    assert.equal(attempts, 1);
  });
});
