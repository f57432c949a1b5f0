// Discover's deadline and snapshot selector against an in-process fake server that records what
// each call brought. Needs no segsrv server.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Server, ServerCredentials, status, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";
import {
  type CountRequest,
  CountResponse,
  DEFAULT_DISCOVER_DEADLINE_MS,
  type DiscoverRequest,
  DiscoverResponse,
  SegmentationServiceService,
  SegsrvClient,
  type SnapshotSelector,
} from "../src";

let server: Server;
let target: string;
// what the last call brought: the time left before its deadline (-1: none) and its snapshot
let leftMs = 0;
let snapshot: SnapshotSelector | undefined;

function record(call: ServerUnaryCall<{ snapshot?: SnapshotSelector }, unknown>): void {
  const d = call.getDeadline();
  const at = d instanceof Date ? d.getTime() : d;
  leftMs = Number.isFinite(at) ? at - Date.now() : -1;
  snapshot = call.request.snapshot;
}

before(async () => {
  server = new Server();
  const unimplemented = (_call: unknown, callback: sendUnaryData<unknown>) =>
    callback({ code: status.UNIMPLEMENTED, details: "not in the fake" });
  const impl: Record<string, unknown> = {};
  for (const name of Object.keys(SegmentationServiceService)) impl[name] = unimplemented;
  impl.discover = (call: ServerUnaryCall<DiscoverRequest, DiscoverResponse>, callback: sendUnaryData<DiscoverResponse>) => {
    record(call);
    callback(null, DiscoverResponse.fromPartial({ universe: call.request.universe }));
  };
  impl.count = (call: ServerUnaryCall<CountRequest, CountResponse>, callback: sendUnaryData<CountResponse>) => {
    record(call);
    callback(null, CountResponse.fromPartial({ universe: call.request.universe }));
  };
  server.addService(SegmentationServiceService, impl as never);
  const port = await new Promise<number>((ok, fail) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? fail(err) : ok(p))),
  );
  target = `127.0.0.1:${port}`;
});
after(() => server?.forceShutdown());

// The call's deadline was `wantMs` when it was sent: the time left is in (wantMs - 5 s, wantMs].
function assertDeadline(wantMs: number, what: string): void {
  assert.ok(leftMs > wantMs - 5000 && leftMs <= wantMs, `${what}: ${leftMs} ms left, want a deadline of ${wantMs} ms`);
}

describe("discover", () => {
  it("the default deadline is DEFAULT_DISCOVER_DEADLINE_MS (60 s), other calls keep theirs", async () => {
    assert.equal(DEFAULT_DISCOVER_DEADLINE_MS, 60_000);
    const client = new SegsrvClient(target, { deadlineMs: 2000 });
    try {
      assert.equal(client.discoverDeadlineMs, DEFAULT_DISCOVER_DEADLINE_MS);
      await client.discover({ universe: "customers" });
      assertDeadline(DEFAULT_DISCOVER_DEADLINE_MS, "discover");
      await client.count("customers");
      assertDeadline(2000, "count");
    } finally {
      client.close();
    }
  });

  it("discoverDeadlineMs sets it", async () => {
    const client = new SegsrvClient(target, { discoverDeadlineMs: 90_000 });
    try {
      await client.discover({ universe: "customers" });
      assertDeadline(90_000, "discover");
    } finally {
      client.close();
    }
  });

  it("a withDeadline view's deadline holds, shorter or longer", async () => {
    const client = new SegsrvClient(target);
    try {
      for (const ms of [3000, 600_000]) {
        await client.withDeadline(ms).discover({ universe: "customers" });
        assertDeadline(ms, `discover withDeadline(${ms})`);
      }
    } finally {
      client.close();
    }
  });

  it("a request without a snapshot gets the client's", async () => {
    const client = new SegsrvClient(target, { snapshot: "petnord", version: "v1" });
    try {
      await client.discover({ universe: "customers" });
      assert.deepEqual(snapshot, { name: "petnord", version: "v1" });
      await client.discover({ universe: "customers", snapshot: { name: "other", version: "" } });
      assert.deepEqual(snapshot, { name: "other", version: "" });
    } finally {
      client.close();
    }
  });
});
