// Checks a live server (env SEGSRV_ADDR, host:port) against the PetNord fixture (env
// SEGSRV_FIXTURE, default clients/fixtures/petnord_expected.json), whose figures DuckDB
// computed from the source data. Every test is skipped when SEGSRV_ADDR is unset.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { status } from "@grpc/grpc-js";
import {
  type Assignment,
  type AssignResponse,
  type DiscoveredSegment,
  type DiscoverResponse,
  RelateDirection,
  SegsrvClient,
  SegsrvError,
  type Term,
} from "../src";

interface Fixture {
  snapshot: string;
  universe: string;
  n_customers: number;
  known_id: string;
  unknown_id: string;
  counts: { description: string; condition: unknown; count: number }[];
  relate: {
    condition: unknown;
    fields: string[];
    condition_count: number;
    hits: { value: string; support: number; feature_count: number; lift: number }[];
  };
  predict: { target_field: string; values: string[] };
  assign: {
    segments: { name: string; priority: number; size: number }[];
    ids: string[];
    assignments: { id: string; found: boolean; members: string[]; primary_segment: string }[];
    features: { terms: { field: string; value: string }[]; members: string[]; primary_segment: string };
  };
  discover: {
    fields: string[];
    max_length: number;
    limit: number;
    k: number;
    target: unknown;
    target_count: number;
    counts: Record<string, number>;
    target_counts: Record<string, number>;
  };
}

const ADDR = process.env.SEGSRV_ADDR ?? "";
// compiled to dist/test/: the fixture is clients/fixtures/ (three levels up)
const FIXTURE_PATH = process.env.SEGSRV_FIXTURE || resolve(__dirname, "..", "..", "..", "fixtures", "petnord_expected.json");
const fixture: Fixture = JSON.parse(readFileSync(FIXTURE_PATH, "utf8"));
const universe = fixture.universe;
const skip: string | false = ADDR ? false : "SEGSRV_ADDR is unset: no server to test against";
const REL_TOL = 1e-9;

let client: SegsrvClient;

before(() => {
  if (ADDR) client = new SegsrvClient(ADDR, { deadlineMs: 30_000 });
});
after(() => client?.close());

function assertRelClose(expected: number, actual: number, what: string): void {
  const tol = REL_TOL * Math.max(Math.abs(expected), Math.abs(actual));
  assert.ok(Math.abs(expected - actual) <= tol, `${what}: expected ${expected}, got ${actual} (relative tolerance ${REL_TOL})`);
}

async function rejection(p: Promise<unknown>): Promise<SegsrvError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof SegsrvError, `not a SegsrvError: ${e}`);
    return e;
  }
  assert.fail("the call succeeded");
}

describe("GetSnapshotInfo", () => {
  it("names the fixture snapshot and the universe's row count", { skip }, async () => {
    const info = await client.snapshotInfo();
    assert.equal(info.info?.snapshotName, fixture.snapshot);
    assert.ok(info.info?.snapshotVersion, "snapshot version is empty");
    assert.ok(info.servedSnapshots.includes(fixture.snapshot), `served: ${info.servedSnapshots}`);
    const u = info.universes.find((x) => x.name === universe);
    assert.ok(u, `no universe ${universe} in ${info.universes.map((x) => x.name)}`);
    assert.equal(u.rowCount, fixture.n_customers);
    assert.ok(u.fields.length > 0, "universe has no fields");
  });
});

describe("Count of every fixture condition", () => {
  for (const c of fixture.counts) {
    it(c.description, { skip }, async () => {
      const r = await client.count(universe, SegsrvClient.condition(c.condition));
      assert.equal(r.count, c.count);
      assert.equal(r.rowCount, fixture.n_customers);
      assert.equal(r.universe, universe);
    });
  }
});

describe("Relate the fixture condition to region, direction ALL", () => {
  const rel = fixture.relate;
  const field = rel.fields[0];
  let hits: Promise<Awaited<ReturnType<SegsrvClient["relate"]>>> | undefined;
  const response = () =>
    (hits ??= client.relate(universe, SegsrvClient.condition(rel.condition), rel.fields, RelateDirection.RELATE_DIRECTION_ALL));

  it("condition and row counts", { skip }, async () => {
    const r = await response();
    assert.equal(r.conditionCount, rel.condition_count);
    assert.equal(r.rowCount, fixture.n_customers);
    assert.deepEqual([...new Set(r.hits.map((h) => h.field))].sort(), [...rel.fields].sort());
    assert.equal(r.hits.length, rel.hits.length, `hits: ${r.hits.map((h) => `${h.field}=${h.value}`)}`);
  });
  for (const want of rel.hits) {
    it(`${field}=${want.value}`, { skip }, async () => {
      const r = await response();
      const hit = r.hits.find((h) => h.field === field && h.value === want.value);
      assert.ok(hit, `no hit ${field}=${want.value} among ${r.hits.map((h) => `${h.field}=${h.value}`)}`);
      assert.equal(hit.support, want.support, "support");
      assert.equal(hit.featureCount, want.feature_count, "feature_count");
      assertRelClose(want.lift, hit.lift, "lift");
    });
  }
});

describe("Predict", () => {
  it("probabilities sum to 1, explanation factors multiply to each probability", { skip }, async () => {
    const p = fixture.predict;
    const r = await client.predict(universe, p.target_field, fixture.known_id);
    assert.equal(r.targetField, p.target_field);
    assert.equal(r.universe, universe);
    assert.equal(r.multiValued, false);
    assert.deepEqual(r.probabilities.map((x) => x.value).sort(), [...p.values].sort());
    let sum = 0;
    let previous = Infinity;
    for (const tp of r.probabilities) {
      sum += tp.probability;
      assert.ok(tp.probability <= previous, "not most probable first");
      previous = tp.probability;
      // probability = base_probability * product(factors) / normalizer
      const e = tp.explanation;
      assert.ok(e, `no explanation for ${tp.value}`);
      const product = e.factors.reduce((acc, f) => acc * f.factor, e.baseProbability) / e.normalizer;
      assertRelClose(tp.probability, product, `explanation of ${tp.value}`);
    }
    assert.ok(Math.abs(sum - 1) <= 1e-9, `probabilities sum to ${sum}`);
  });
});

describe("Errors", () => {
  it("Count with an unknown field is INVALID_ARGUMENT with a field violation", { skip }, async () => {
    const bad = SegsrvClient.condition({ term: { field: "no_such_field", value: "x" } });
    const e = await rejection(client.count(universe, bad));
    assert.equal(e.code, status.INVALID_ARGUMENT, e.message);
    assert.equal(e.reason, "UNKNOWN_FIELD");
    assert.ok(
      e.violations.some((v) => v.field === "condition.term.field"),
      `violations: ${JSON.stringify(e.violations)}`,
    );
  });

  it("Predict defaults to logistic (penalty cross-validated) and takes the caller's l2", { skip }, async () => {
    const p = fixture.predict;
    const d = await client.predict(universe, p.target_field, fixture.known_id);
    assert.equal(d.regularisation.length, 1);
    assert.ok(d.regularisation[0].crossValidated && d.regularisation[0].l2 > 0, JSON.stringify(d.regularisation));
    const r = await client.predict({ universe, targetField: p.target_field, id: fixture.known_id, l2: 3 });
    assert.deepEqual(
      r.regularisation.map((x) => [x.l2, x.crossValidated]),
      [[3, false]],
    );
  });

  it("Predict for an unknown id is NOT_FOUND", { skip }, async () => {
    const e = await rejection(client.predict(universe, fixture.predict.target_field, fixture.unknown_id));
    assert.equal(e.code, status.NOT_FOUND, e.message);
    assert.ok(e.details.includes(fixture.unknown_id), e.details);
    assert.ok(e.violations.some((v) => v.field === "id"), `violations: ${JSON.stringify(e.violations)}`);
  });

  it("Discover with max_length 9 is RESOURCE_EXHAUSTED with a violation on max_length", { skip }, async () => {
    const e = await rejection(client.discover({ universe, maxLength: 9 }));
    assert.equal(e.code, status.RESOURCE_EXHAUSTED, e.message);
    assert.equal(e.reason, "LIMIT_EXCEEDED");
    assert.ok(e.violations.some((v) => v.field === "max_length"), `violations: ${JSON.stringify(e.violations)}`);
  });

  it("a passed deadline is DEADLINE_EXCEEDED", { skip }, async () => {
    const hurried = client.withDeadline(1e-6);
    const e = await rejection(hurried.snapshotInfo());
    assert.equal(e.code, status.DEADLINE_EXCEEDED, e.message);
    hurried.close(); // a view: leaves the shared channel open
    assert.equal((await client.count(universe)).count, fixture.n_customers);
  });
});

// One assignment of a found customer against the fixture: every catalog segment listed once with
// its size, share (size / n_customers) and priority; the member set; the primary segment.
function assertAssignment(what: string, got: Assignment, members: string[], primary: string): void {
  const want = new Map(fixture.assign.segments.map((s) => [s.name, s]));
  const listed = got.segments.map((m) => m.segment);
  assert.deepEqual([...listed].sort(), [...want.keys()].sort(), `${what}: every catalog segment once`);
  for (const m of got.segments) {
    const s = want.get(m.segment)!;
    assert.equal(m.segmentSize, s.size, `${what}: size of ${m.segment}`);
    assertRelClose(s.size / fixture.n_customers, m.share, `${what}: share of ${m.segment}`);
    assert.equal(m.priority, s.priority, `${what}: priority of ${m.segment}`);
  }
  const gotMembers = got.segments.filter((m) => m.member).map((m) => m.segment).sort();
  assert.deepEqual(gotMembers, [...members].sort(), `${what}: members`);
  assert.equal(got.primarySegment, primary, `${what}: primary segment`);
}

describe("Assign", () => {
  const a = fixture.assign;
  // one call for the whole batch (the unknown id included), shared by the tests below; any error,
  // UNIMPLEMENTED included, fails them
  let batch: Promise<AssignResponse> | undefined;
  const answer = () => (batch ??= client.assign(universe, a.ids, true));

  it("answers the batch with one assignment per id, in order", { skip }, async () => {
    const r = await answer();
    assert.equal(r.universe, universe);
    assert.deepEqual(
      r.assignments.map((x) => x.id),
      a.ids,
    );
  });
  for (const [i, want] of a.assignments.entries()) {
    it(`${want.id}: found ${want.found}, members [${want.members}], primary '${want.primary_segment}'`, { skip }, async () => {
      const got = (await answer()).assignments[i];
      assert.ok(got, `no assignment ${i}`);
      assert.equal(got.id, want.id);
      assert.equal(got.found, want.found, `${want.id}: found`);
      if (!want.found) {
        assert.equal(got.segments.length, 0, `${want.id}: segments of an unknown id`);
        assert.equal(got.primarySegment, "", `${want.id}: primary of an unknown id`);
        return;
      }
      assertAssignment(want.id, got, want.members, want.primary_segment);
    });
  }
  it("a new customer given by features", { skip }, async () => {
    const f = a.features;
    const r = await client.assign({ universe, features: f.terms, includePropensities: true });
    assert.equal(r.assignments.length, 1, "one assignment for a feature list");
    const got = r.assignments[0];
    assert.equal(got.id, "");
    assert.equal(got.found, true, "a feature-list customer is found");
    assertAssignment("features", got, f.members, f.primary_segment);
  });
});

// The server's default privacy floor (k = 10): no discovered segment has fewer rows.
const PRIVACY_FLOOR = 10;

// The fixture's key of a conjunction: its terms as field=value, sorted, joined with " & ".
function discoverKey(terms: Term[]): string {
  return terms
    .map((t) => `${t.field}=${t.value}`)
    .sort()
    .join(" & ");
}

// The fixture's count (discover.counts or discover.target_counts) of the customers having every
// term; 0 when the conjunction is not listed (no customer has it).
function fixtureCount(counts: Record<string, number>, terms: Term[]): number {
  return counts[discoverKey(terms)] ?? 0;
}

// What every discovered segment has, with or without a target: 1..max_length terms on the
// requested fields, support at or above the privacy floor and as the fixture counts it (DuckDB),
// share = support / row_count, q-value <= 0.05 (the default) and at least the p-value, a name and
// a description.
function assertDiscoveredCommon(what: string, s: DiscoveredSegment, rowCount: number): void {
  const d = fixture.discover;
  assert.ok(s.terms.length >= 1 && s.terms.length <= d.max_length, `${what}: ${s.terms.length} terms, want 1..${d.max_length}`);
  for (const t of s.terms) assert.ok(d.fields.includes(t.field), `${what}: term on ${t.field}, not requested`);
  assert.ok(s.support >= PRIVACY_FLOOR, `${what}: support ${s.support} below the privacy floor`);
  assert.equal(s.support, fixtureCount(d.counts, s.terms), `${what}: support (DuckDB count)`);
  assert.ok(s.share > 0 && s.share <= 1, `${what}: share ${s.share} not in (0, 1]`);
  assertRelClose(s.support / rowCount, s.share, `${what}: share = support / row_count`);
  assert.ok(
    s.pValue >= 0 && s.pValue <= s.qValue && s.qValue <= 0.05,
    `${what}: p ${s.pValue}, q ${s.qValue}: want 0 <= p <= q <= 0.05`,
  );
  assert.ok(s.name, `${what}: no name`);
  assert.ok(s.description, `${what}: no description`);
}

describe("Discover without a target over the fixture's fields, max_length 2, limit 5", () => {
  const d = fixture.discover;
  // one call shared by the tests below; any error, UNIMPLEMENTED included, fails them
  let answer: Promise<DiscoverResponse> | undefined;
  const response = () => (answer ??= client.discover({ universe, fields: d.fields, maxLength: d.max_length, limit: d.limit }));

  it("universe, row count, 1..limit segments, no target", { skip }, async () => {
    const r = await response();
    assert.equal(r.universe, universe);
    assert.equal(r.rowCount, fixture.n_customers);
    assert.equal(r.suppressed, false);
    assert.equal(r.targetCount, 0, "target_count without a target");
    assert.equal(r.segmentation, undefined, "a segmentation without k");
    assert.ok(r.segments.length >= 1 && r.segments.length <= d.limit, `${r.segments.length} segments, want 1..${d.limit}`);
  });

  it("every segment: 2+ terms, support and lift from the DuckDB counts, share, adjusted lift, q-value, name", { skip }, async () => {
    const r = await response();
    assert.ok(r.segments.length >= 1, "no segments");
    for (const [i, s] of r.segments.entries()) {
      const what = `segment ${i} (${discoverKey(s.terms)})`;
      assertDiscoveredCommon(what, s, r.rowCount);
      assert.ok(s.terms.length >= 2, `${what}: fewer than 2 terms without a target`);
      assert.equal(s.direction, "", `${what}: direction without a target`);
      assert.equal(s.targetSupport, 0, `${what}: target_support without a target`);
      // lift: observed over what independence of the terms predicts, from the fixture
      const expected = s.terms.reduce((acc, t) => (acc * fixtureCount(d.counts, [t])) / r.rowCount, r.rowCount);
      assert.ok(s.lift > 1, `${what}: lift ${s.lift} is not above 1`);
      assertRelClose(s.support / expected, s.lift, `${what}: lift over independence`);
      if (s.terms.length === 2) assertRelClose(s.lift, s.splitLift, `${what}: split_lift of a pair (one split)`);
      // adjust_for_activity defaults to true: an adjusted lift (NaN would mean not adjusted)
      assert.ok(Number.isFinite(s.adjustedLift) && s.adjustedLift > 0, `${what}: adjusted_lift ${s.adjustedLift}, want a positive number`);
    }
  });

  it("the first segments' conditions count their support", { skip }, async () => {
    const r = await response();
    assert.ok(r.segments.length >= 1, "no segments");
    for (const [i, s] of r.segments.slice(0, 3).entries()) {
      const { count } = await client.count(universe, s.condition);
      assert.equal(count, s.support, `segment ${i} (${discoverKey(s.terms)}): Count of its condition`);
    }
  });
});

describe("Discover with target churned = true and k = 3", () => {
  const d = fixture.discover;
  let answer: Promise<DiscoverResponse> | undefined;
  const response = () =>
    (answer ??= client.discover({
      universe,
      fields: d.fields,
      maxLength: d.max_length,
      target: { term: { field: "churned", value: "true" } },
      k: d.k,
    }));

  it("row count and target count", { skip }, async () => {
    const churned = fixture.counts.find((c) => c.description === "churned = true");
    assert.ok(churned, "the fixture has no count of churned = true");
    assert.equal(churned.count, d.target_count, "the fixture's churned counts");
    const r = await response();
    assert.equal(r.rowCount, fixture.n_customers);
    assert.equal(r.targetCount, churned.count, "target_count");
    assert.ok(r.segments.length >= 1, "no segments");
  });

  it("every segment: direction, target rate and lift, DuckDB counts", { skip }, async () => {
    const r = await response();
    assert.ok(r.segments.length >= 1, "no segments");
    const rate = r.targetCount / r.rowCount;
    for (const [i, s] of r.segments.entries()) {
      const what = `segment ${i} (${discoverKey(s.terms)}, ${s.direction})`;
      assertDiscoveredCommon(what, s, r.rowCount);
      assert.equal(s.targetSupport, fixtureCount(d.target_counts, s.terms), `${what}: target_support (DuckDB count)`);
      const segRate = s.targetSupport / s.support;
      assertRelClose(segRate, s.targetRate, `${what}: target_rate = target_support / support`);
      assertRelClose(segRate / rate, s.lift, `${what}: lift = segment rate / overall rate`);
      if (s.direction === "high") assert.ok(s.lift > 1, `${what}: lift ${s.lift} is not above 1`);
      else if (s.direction === "low") assert.ok(s.lift < 1, `${what}: lift ${s.lift} is not below 1`);
      else assert.fail(`${what}: direction '${s.direction}', want high or low`);
    }
  });

  it("segmentation: at most k personas, covered + other = row count", { skip }, async () => {
    const r = await response();
    const g = r.segmentation;
    assert.ok(g, `no segmentation with k = ${d.k}`);
    assert.ok(g.personas.length >= 1 && g.personas.length <= d.k, `${g.personas.length} personas, want 1..${d.k}`);
    assert.equal(g.covered + g.other, r.rowCount, "covered + other");
    assertRelClose(g.covered / r.rowCount, g.coverage, "coverage");
    assert.ok(g.overlap >= 0 && g.overlap <= g.covered, `overlap ${g.overlap}`);
    const seen = new Set<number>();
    for (const p of g.personas) {
      assert.ok(p.segment >= 0 && p.segment < r.segments.length && !seen.has(p.segment), `persona on segment ${p.segment}: out of range or repeated`);
      seen.add(p.segment);
    }
    assert.equal(g.personas.reduce((acc, p) => acc + p.gain, 0), g.covered, "personas' gains sum to covered");
    assert.equal(g.personas.reduce((acc, p) => acc + p.primary, 0), g.covered, "personas' primary members sum to covered");
  });
});

describe("Keepalive", () => {
  it("keepaliveTimeMs below grpcio's 5-minute ping interval is refused", { skip }, () => {
    assert.throws(() => new SegsrvClient("127.0.0.1:1", { keepaliveTimeMs: 30_000 }), RangeError);
    new SegsrvClient("127.0.0.1:1", { keepaliveTimeMs: 5 * 60_000 }).close();
  });
});
