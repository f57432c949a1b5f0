package dev.segsrv.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;
import static org.junit.jupiter.api.DynamicTest.dynamicTest;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import dev.segsrv.v1.AssignRequest;
import dev.segsrv.v1.AssignResponse;
import dev.segsrv.v1.Assignment;
import dev.segsrv.v1.Condition;
import dev.segsrv.v1.CountResponse;
import dev.segsrv.v1.DiscoverRequest;
import dev.segsrv.v1.DiscoverResponse;
import dev.segsrv.v1.DiscoveredSegment;
import dev.segsrv.v1.ExplanationFactor;
import dev.segsrv.v1.GetSnapshotInfoResponse;
import dev.segsrv.v1.Persona;
import dev.segsrv.v1.PredictRequest;
import dev.segsrv.v1.PredictResponse;
import dev.segsrv.v1.RelateDirection;
import dev.segsrv.v1.RelateHit;
import dev.segsrv.v1.RelateResponse;
import dev.segsrv.v1.SegmentMembership;
import dev.segsrv.v1.Segmentation;
import dev.segsrv.v1.TargetProbability;
import dev.segsrv.v1.Term;
import dev.segsrv.v1.UniverseInfo;
import io.grpc.Status;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

/**
 * Checks a live server (env SEGSRV_ADDR, host:port) against the PetNord fixture (env
 * SEGSRV_FIXTURE, default clients/fixtures/petnord_expected.json), whose figures DuckDB computed
 * from the source data. Skipped when SEGSRV_ADDR is unset.
 */
class SegsrvClientTest {
  private static final double REL_TOL = 1e-9;
  /** The server's default privacy floor (k = 10): no discovered segment has fewer rows. */
  private static final long PRIVACY_FLOOR = 10;

  private static SegsrvClient client;
  private static JsonObject fixture;
  private static String universe;

  private static final String ADDR = System.getenv("SEGSRV_ADDR");

  @BeforeAll
  static void connect() throws IOException {
    if (ADDR == null || ADDR.isBlank()) {
      return; // every test is skipped by requireServer()
    }
    String path = System.getenv("SEGSRV_FIXTURE");
    if (path == null || path.isBlank()) {
      path = System.getProperty("segsrv.fixture.default", "../fixtures/petnord_expected.json");
    }
    fixture =
        JsonParser.parseString(Files.readString(Path.of(path), StandardCharsets.UTF_8))
            .getAsJsonObject();
    universe = fixture.get("universe").getAsString();
    client = SegsrvClient.builder(ADDR).deadline(Duration.ofSeconds(30)).build();
  }

  @BeforeEach
  void requireServer() {
    assumeTrue(client != null, "SEGSRV_ADDR is unset: no server to test against");
  }

  @AfterAll
  static void close() {
    if (client != null) {
      client.close();
    }
  }

  private static Condition condition(JsonElement json) {
    return SegsrvClient.condition(json.toString());
  }

  private static void assertRelClose(double expected, double actual, String what) {
    double tol = REL_TOL * Math.max(Math.abs(expected), Math.abs(actual));
    assertTrue(
        Math.abs(expected - actual) <= tol,
        what + ": expected " + expected + ", got " + actual + " (relative tolerance " + REL_TOL + ")");
  }

  @Test
  @DisplayName("GetSnapshotInfo names the fixture snapshot and the universe's row count")
  void snapshotInfo() {
    GetSnapshotInfoResponse info = client.snapshotInfo();
    String snapshot = fixture.get("snapshot").getAsString();
    assertEquals(snapshot, info.getInfo().getSnapshotName());
    assertFalse(info.getInfo().getSnapshotVersion().isEmpty(), "snapshot version is empty");
    assertTrue(info.getServedSnapshotsList().contains(snapshot), "served: " + info.getServedSnapshotsList());
    UniverseInfo customers =
        info.getUniversesList().stream()
            .filter(u -> u.getName().equals(universe))
            .findFirst()
            .orElseThrow(() -> new AssertionError("no universe " + universe + " in " + info.getUniversesList()));
    assertEquals(fixture.get("n_customers").getAsLong(), customers.getRowCount());
    assertTrue(customers.getFieldsCount() > 0, "universe has no fields");
  }

  @TestFactory
  @DisplayName("Count of every fixture condition")
  Stream<DynamicTest> counts() {
    long n = fixture.get("n_customers").getAsLong();
    List<DynamicTest> tests = new ArrayList<>();
    for (JsonElement e : fixture.getAsJsonArray("counts")) {
      JsonObject c = e.getAsJsonObject();
      tests.add(
          dynamicTest(
              c.get("description").getAsString(),
              () -> {
                CountResponse r = client.count(universe, condition(c.get("condition")));
                assertEquals(c.get("count").getAsLong(), r.getCount());
                assertEquals(n, r.getRowCount());
                assertEquals(universe, r.getUniverse());
              }));
    }
    assertFalse(tests.isEmpty(), "fixture has no counts");
    return tests.stream();
  }

  @TestFactory
  @DisplayName("Relate the fixture condition to region, direction ALL")
  Stream<DynamicTest> relate() {
    JsonObject rel = fixture.getAsJsonObject("relate");
    List<String> fields = new ArrayList<>();
    rel.getAsJsonArray("fields").forEach(f -> fields.add(f.getAsString()));
    RelateResponse r =
        client.relate(
            universe, condition(rel.get("condition")), fields, RelateDirection.RELATE_DIRECTION_ALL);
    Map<String, RelateHit> byValue = new HashMap<>();
    for (RelateHit h : r.getHitsList()) {
      byValue.put(h.getField() + "=" + h.getValue(), h);
    }
    List<DynamicTest> tests = new ArrayList<>();
    tests.add(
        dynamicTest(
            "condition and row counts",
            () -> {
              assertEquals(rel.get("condition_count").getAsLong(), r.getConditionCount());
              assertEquals(fixture.get("n_customers").getAsLong(), r.getRowCount());
              Set<String> got = new TreeSet<>();
              r.getHitsList().forEach(h -> got.add(h.getField()));
              assertEquals(new TreeSet<>(fields), got, "hits outside the requested fields");
              assertEquals(rel.getAsJsonArray("hits").size(), r.getHitsCount(), "hits: " + byValue.keySet());
            }));
    String field = fields.get(0);
    for (JsonElement e : rel.getAsJsonArray("hits")) {
      JsonObject want = e.getAsJsonObject();
      String value = want.get("value").getAsString();
      tests.add(
          dynamicTest(
              field + "=" + value,
              () -> {
                RelateHit hit = byValue.get(field + "=" + value);
                assertNotNull(hit, "no hit " + field + "=" + value + " among " + byValue.keySet());
                assertEquals(want.get("support").getAsLong(), hit.getSupport(), "support");
                assertEquals(want.get("feature_count").getAsLong(), hit.getFeatureCount(), "feature_count");
                assertRelClose(want.get("lift").getAsDouble(), hit.getLift(), "lift");
              }));
    }
    return tests.stream();
  }

  @Test
  @DisplayName("Predict: probabilities sum to 1, explanation factors multiply to each probability")
  void predict() {
    JsonObject p = fixture.getAsJsonObject("predict");
    String target = p.get("target_field").getAsString();
    PredictResponse r = client.predict(universe, target, fixture.get("known_id").getAsString());
    assertEquals(target, r.getTargetField());
    assertEquals(universe, r.getUniverse());
    assertFalse(r.getMultiValued());
    Set<String> values = new TreeSet<>();
    p.getAsJsonArray("values").forEach(v -> values.add(v.getAsString()));
    Set<String> got = new TreeSet<>();
    double sum = 0;
    double previous = Double.POSITIVE_INFINITY;
    for (TargetProbability tp : r.getProbabilitiesList()) {
      got.add(tp.getValue());
      sum += tp.getProbability();
      assertTrue(tp.getProbability() <= previous, "not most probable first");
      previous = tp.getProbability();
      // probability = base_probability * product(factors) / normalizer
      double product = tp.getExplanation().getBaseProbability();
      for (ExplanationFactor f : tp.getExplanation().getFactorsList()) {
        product *= f.getFactor();
      }
      product /= tp.getExplanation().getNormalizer();
      assertRelClose(tp.getProbability(), product, "explanation of " + tp.getValue());
    }
    assertEquals(values, got);
    assertEquals(1.0, sum, 1e-9, "probabilities sum");
  }

  @Test
  @DisplayName("Predict defaults to logistic (penalty cross-validated) and takes the caller's l2")
  void predictDefaultAndL2() {
    String target = fixture.getAsJsonObject("predict").get("target_field").getAsString();
    String id = fixture.get("known_id").getAsString();
    PredictResponse d = client.predict(universe, target, id);
    assertEquals(1, d.getRegularisationCount());
    assertTrue(d.getRegularisation(0).getCrossValidated() && d.getRegularisation(0).getL2() > 0);
    PredictResponse r =
        client.predict(
            PredictRequest.newBuilder()
                .setUniverse(universe)
                .setTargetField(target)
                .setId(id)
                .setL2(3.0)
                .build());
    assertEquals(1, r.getRegularisationCount());
    assertEquals(3.0, r.getRegularisation(0).getL2());
    assertFalse(r.getRegularisation(0).getCrossValidated());
  }

  @Test
  @DisplayName("Count with an unknown field is INVALID_ARGUMENT with a field violation")
  void unknownFieldIsInvalidArgument() {
    Condition bad = SegsrvClient.condition("{\"term\": {\"field\": \"no_such_field\", \"value\": \"x\"}}");
    SegsrvException e = assertThrows(SegsrvException.class, () -> client.count(universe, bad));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code(), e.getMessage());
    assertEquals("UNKNOWN_FIELD", e.reason());
    assertTrue(
        e.violations().stream().anyMatch(v -> v.field().equals("condition.term.field")),
        "violations: " + e.violations());
  }

  @Test
  @DisplayName("Predict for an unknown id is NOT_FOUND")
  void unknownIdIsNotFound() {
    String target = fixture.getAsJsonObject("predict").get("target_field").getAsString();
    String unknown = fixture.get("unknown_id").getAsString();
    SegsrvException e =
        assertThrows(SegsrvException.class, () -> client.predict(universe, target, unknown));
    assertEquals(Status.Code.NOT_FOUND, e.code(), e.getMessage());
    assertTrue(e.statusMessage().contains(unknown), e.statusMessage());
    assertTrue(e.violations().stream().anyMatch(v -> v.field().equals("id")), "violations: " + e.violations());
  }

  @Test
  @DisplayName("A passed deadline is DEADLINE_EXCEEDED")
  void deadline() {
    SegsrvClient hurried = client.withDeadline(Duration.ofNanos(1));
    SegsrvException e = assertThrows(SegsrvException.class, hurried::snapshotInfo);
    assertEquals(Status.Code.DEADLINE_EXCEEDED, e.code(), e.getMessage());
    hurried.close(); // a view: leaves the shared channel open
    assertEquals(fixture.get("n_customers").getAsLong(), client.count(universe, null).getCount());
  }

  /**
   * Compares one assignment of a found customer with the fixture: every catalog segment listed
   * once with its size, share (size / n_customers) and priority; the member set; the primary
   * segment.
   */
  private static void assertAssignment(
      String what, Assignment got, Set<String> members, String primary) {
    JsonObject a = fixture.getAsJsonObject("assign");
    long n = fixture.get("n_customers").getAsLong();
    Map<String, JsonObject> segments = new HashMap<>();
    a.getAsJsonArray("segments")
        .forEach(e -> segments.put(e.getAsJsonObject().get("name").getAsString(), e.getAsJsonObject()));
    Set<String> listed = new TreeSet<>();
    Set<String> gotMembers = new TreeSet<>();
    for (SegmentMembership m : got.getSegmentsList()) {
      JsonObject want = segments.get(m.getSegment());
      assertNotNull(want, what + ": unexpected segment " + m.getSegment());
      assertTrue(listed.add(m.getSegment()), what + ": segment " + m.getSegment() + " listed twice");
      long size = want.get("size").getAsLong();
      assertEquals(size, m.getSegmentSize(), what + ": size of " + m.getSegment());
      assertRelClose((double) size / n, m.getShare(), what + ": share of " + m.getSegment());
      assertEquals(want.get("priority").getAsInt(), m.getPriority(), what + ": priority of " + m.getSegment());
      if (m.getMember()) {
        gotMembers.add(m.getSegment());
      }
    }
    assertEquals(new TreeSet<>(segments.keySet()), listed, what + ": every catalog segment");
    assertEquals(members, gotMembers, what + ": members");
    assertEquals(primary, got.getPrimarySegment(), what + ": primary segment");
  }

  private static Set<String> strings(JsonElement array) {
    Set<String> out = new TreeSet<>();
    array.getAsJsonArray().forEach(e -> out.add(e.getAsString()));
    return out;
  }

  @TestFactory
  @DisplayName("Assign a batch of ids (one unknown): found, members, primary segment, sizes")
  Stream<DynamicTest> assign() {
    JsonObject a = fixture.getAsJsonObject("assign");
    assertNotNull(a, "the fixture has no assign section");
    List<String> ids = new ArrayList<>();
    a.getAsJsonArray("ids").forEach(e -> ids.add(e.getAsString()));
    // one call for the whole batch; any error (UNIMPLEMENTED included) fails the test
    AssignResponse r = client.assign(universe, ids, true); // with propensities: every catalog segment is listed
    List<DynamicTest> tests = new ArrayList<>();
    tests.add(
        dynamicTest(
            "one assignment per id, in order",
            () -> {
              assertEquals(universe, r.getUniverse());
              List<String> got = new ArrayList<>();
              r.getAssignmentsList().forEach(x -> got.add(x.getId()));
              assertEquals(ids, got);
            }));
    JsonArray want = a.getAsJsonArray("assignments");
    for (int i = 0; i < want.size(); i++) {
      int k = i;
      JsonObject w = want.get(i).getAsJsonObject();
      String id = w.get("id").getAsString();
      tests.add(
          dynamicTest(
              id,
              () -> {
                assertTrue(k < r.getAssignmentsCount(), "no assignment " + k);
                Assignment got = r.getAssignments(k);
                assertEquals(id, got.getId());
                assertEquals(w.get("found").getAsBoolean(), got.getFound(), id + ": found");
                if (!got.getFound()) {
                  assertEquals(0, got.getSegmentsCount(), id + ": segments of an unknown id");
                  assertEquals("", got.getPrimarySegment(), id + ": primary of an unknown id");
                  return;
                }
                assertAssignment(
                    id, got, strings(w.get("members")), w.get("primary_segment").getAsString());
              }));
    }
    return tests.stream();
  }

  @Test
  @DisplayName("Assign a new customer given by features")
  void assignFeatures() {
    JsonObject f = fixture.getAsJsonObject("assign").getAsJsonObject("features");
    AssignRequest.Builder req = AssignRequest.newBuilder().setUniverse(universe).setIncludePropensities(true);
    for (JsonElement e : f.getAsJsonArray("terms")) {
      JsonObject t = e.getAsJsonObject();
      req.addFeatures(
          Term.newBuilder().setField(t.get("field").getAsString()).setValue(t.get("value").getAsString()));
    }
    AssignResponse r = client.assign(req.build());
    assertEquals(1, r.getAssignmentsCount(), "one assignment for a feature list");
    Assignment got = r.getAssignments(0);
    assertEquals("", got.getId());
    assertTrue(got.getFound(), "a feature-list customer is found");
    assertAssignment(
        "features", got, strings(f.get("members")), f.get("primary_segment").getAsString());
  }

  // ---- Discover ----

  /** The fixture's key of a conjunction: its terms as field=value, sorted, joined with " & ". */
  private static String discoverKey(List<Term> terms) {
    return terms.stream()
        .map(t -> t.getField() + "=" + t.getValue())
        .sorted()
        .collect(Collectors.joining(" & "));
  }

  /**
   * The fixture's count (discover.counts or discover.target_counts) of the customers having every
   * term; 0 when the conjunction is not listed (no customer has it).
   */
  private static long fixtureCount(String section, List<Term> terms) {
    JsonElement n =
        fixture.getAsJsonObject("discover").getAsJsonObject(section).get(discoverKey(terms));
    return n == null ? 0 : n.getAsLong();
  }

  private static List<String> discoverFields() {
    List<String> fields = new ArrayList<>();
    fixture.getAsJsonObject("discover").getAsJsonArray("fields").forEach(f -> fields.add(f.getAsString()));
    return fields;
  }

  /**
   * What every discovered segment has, with or without a target: 1..max_length terms on the
   * requested fields, support at or above the privacy floor and as the fixture counts it (DuckDB),
   * share = support / row_count, q-value <= 0.05 (the default) and at least the p-value, a name
   * and a description.
   */
  private static void assertDiscoveredCommon(String what, DiscoveredSegment s, long rowCount) {
    int maxLength = fixture.getAsJsonObject("discover").get("max_length").getAsInt();
    assertTrue(
        s.getTermsCount() >= 1 && s.getTermsCount() <= maxLength,
        what + ": " + s.getTermsCount() + " terms, want 1.." + maxLength);
    Set<String> fields = new HashSet<>(discoverFields());
    for (Term t : s.getTermsList()) {
      assertTrue(fields.contains(t.getField()), what + ": term on " + t.getField() + ", not requested");
    }
    assertTrue(s.getSupport() >= PRIVACY_FLOOR, what + ": support " + s.getSupport() + " below the privacy floor");
    assertEquals(fixtureCount("counts", s.getTermsList()), s.getSupport(), what + ": support (DuckDB count)");
    assertTrue(s.getShare() > 0 && s.getShare() <= 1, what + ": share " + s.getShare() + " not in (0, 1]");
    assertRelClose((double) s.getSupport() / rowCount, s.getShare(), what + ": share = support / row_count");
    assertTrue(
        s.getPValue() >= 0 && s.getPValue() <= s.getQValue() && s.getQValue() <= 0.05,
        what + ": p " + s.getPValue() + ", q " + s.getQValue() + ": want 0 <= p <= q <= 0.05");
    assertFalse(s.getName().isEmpty(), what + ": no name");
    assertFalse(s.getDescription().isEmpty(), what + ": no description");
  }

  @TestFactory
  @DisplayName("Discover without a target over the fixture's fields, max_length 2, limit 5")
  Stream<DynamicTest> discover() {
    JsonObject d = fixture.getAsJsonObject("discover");
    assertNotNull(d, "the fixture has no discover section");
    int limit = d.get("limit").getAsInt();
    // any error, UNIMPLEMENTED included, fails the test
    DiscoverResponse r =
        client.discover(
            DiscoverRequest.newBuilder()
                .setUniverse(universe)
                .addAllFields(discoverFields())
                .setMaxLength(d.get("max_length").getAsInt())
                .setLimit(limit)
                .build());
    long n = fixture.get("n_customers").getAsLong();
    List<DynamicTest> tests = new ArrayList<>();
    tests.add(
        dynamicTest(
            "universe, row count, 1..limit segments, no target",
            () -> {
              assertEquals(universe, r.getUniverse());
              assertEquals(n, r.getRowCount());
              assertFalse(r.getSuppressed(), "suppressed");
              assertEquals(0, r.getTargetCount(), "target_count without a target");
              assertFalse(r.hasSegmentation(), "a segmentation without k");
              assertTrue(
                  r.getSegmentsCount() >= 1 && r.getSegmentsCount() <= limit,
                  r.getSegmentsCount() + " segments, want 1.." + limit);
            }));
    for (int i = 0; i < r.getSegmentsCount(); i++) {
      DiscoveredSegment s = r.getSegments(i);
      String what = "segment " + i + " (" + discoverKey(s.getTermsList()) + ")";
      boolean count = i < 3;
      tests.add(
          dynamicTest(
              what,
              () -> {
                assertDiscoveredCommon(what, s, r.getRowCount());
                assertTrue(s.getTermsCount() >= 2, what + ": fewer than 2 terms without a target");
                assertEquals("", s.getDirection(), what + ": direction without a target");
                assertEquals(0, s.getTargetSupport(), what + ": target_support without a target");
                // lift: observed over what independence of the terms predicts, from the fixture
                double expected = r.getRowCount();
                for (Term t : s.getTermsList()) {
                  expected *= (double) fixtureCount("counts", List.of(t)) / r.getRowCount();
                }
                assertTrue(s.getLift() > 1, what + ": lift " + s.getLift() + " is not above 1");
                assertRelClose(s.getSupport() / expected, s.getLift(), what + ": lift over independence");
                if (s.getTermsCount() == 2) {
                  assertRelClose(s.getLift(), s.getSplitLift(), what + ": split_lift of a pair (one split)");
                }
                // adjust_for_activity defaults to true: an adjusted lift (NaN would mean not adjusted)
                assertTrue(
                    Double.isFinite(s.getAdjustedLift()) && s.getAdjustedLift() > 0,
                    what + ": adjusted_lift " + s.getAdjustedLift() + ", want a positive number");
                if (count) { // the returned condition selects the segment
                  assertEquals(
                      s.getSupport(),
                      client.count(universe, s.getCondition()).getCount(),
                      what + ": Count of its condition");
                }
              }));
    }
    return tests.stream();
  }

  @TestFactory
  @DisplayName("Discover with target churned = true and k = 3: rates, directions, segmentation")
  Stream<DynamicTest> discoverTarget() {
    JsonObject d = fixture.getAsJsonObject("discover");
    assertNotNull(d, "the fixture has no discover section");
    long churned = -1;
    for (JsonElement e : fixture.getAsJsonArray("counts")) {
      if (e.getAsJsonObject().get("description").getAsString().equals("churned = true")) {
        churned = e.getAsJsonObject().get("count").getAsLong();
      }
    }
    assertEquals(d.get("target_count").getAsLong(), churned, "the fixture's churned counts");
    long targetCount = churned;
    int k = d.get("k").getAsInt();
    DiscoverResponse r =
        client.discover(
            DiscoverRequest.newBuilder()
                .setUniverse(universe)
                .addAllFields(discoverFields())
                .setMaxLength(d.get("max_length").getAsInt())
                .setTarget(SegsrvClient.term("churned", "true"))
                .setK(k)
                .build());
    List<DynamicTest> tests = new ArrayList<>();
    tests.add(
        dynamicTest(
            "row count, target count, segments",
            () -> {
              assertEquals(fixture.get("n_customers").getAsLong(), r.getRowCount());
              assertEquals(targetCount, r.getTargetCount(), "target_count");
              assertTrue(r.getSegmentsCount() >= 1, "no segments");
            }));
    double rate = (double) r.getTargetCount() / r.getRowCount();
    for (int i = 0; i < r.getSegmentsCount(); i++) {
      DiscoveredSegment s = r.getSegments(i);
      String what = "segment " + i + " (" + discoverKey(s.getTermsList()) + ", " + s.getDirection() + ")";
      tests.add(
          dynamicTest(
              what,
              () -> {
                assertDiscoveredCommon(what, s, r.getRowCount());
                assertEquals(
                    fixtureCount("target_counts", s.getTermsList()),
                    s.getTargetSupport(),
                    what + ": target_support (DuckDB count)");
                double segRate = (double) s.getTargetSupport() / s.getSupport();
                assertRelClose(segRate, s.getTargetRate(), what + ": target_rate = target_support / support");
                assertRelClose(segRate / rate, s.getLift(), what + ": lift = segment rate / overall rate");
                switch (s.getDirection()) {
                  case "high" -> assertTrue(s.getLift() > 1, what + ": lift " + s.getLift() + " is not above 1");
                  case "low" -> assertTrue(s.getLift() < 1, what + ": lift " + s.getLift() + " is not below 1");
                  default -> fail(what + ": direction '" + s.getDirection() + "', want high or low");
                }
              }));
    }
    tests.add(
        dynamicTest(
            "segmentation: at most k personas, covered + other = row count",
            () -> {
              assertTrue(r.hasSegmentation(), "no segmentation with k = " + k);
              Segmentation g = r.getSegmentation();
              assertTrue(
                  g.getPersonasCount() >= 1 && g.getPersonasCount() <= k,
                  g.getPersonasCount() + " personas, want 1.." + k);
              assertEquals(r.getRowCount(), g.getCovered() + g.getOther(), "covered + other");
              assertRelClose((double) g.getCovered() / r.getRowCount(), g.getCoverage(), "coverage");
              assertTrue(g.getOverlap() >= 0 && g.getOverlap() <= g.getCovered(), "overlap " + g.getOverlap());
              Set<Integer> seen = new HashSet<>();
              long gains = 0;
              long primaries = 0;
              for (Persona p : g.getPersonasList()) {
                assertTrue(
                    p.getSegment() >= 0 && p.getSegment() < r.getSegmentsCount() && seen.add(p.getSegment()),
                    "persona on segment " + p.getSegment() + ": out of range or repeated");
                gains += p.getGain();
                primaries += p.getPrimary();
              }
              assertEquals(g.getCovered(), gains, "personas' gains sum to covered");
              assertEquals(g.getCovered(), primaries, "personas' primary members sum to covered");
            }));
    return tests.stream();
  }

  @Test
  @DisplayName("Discover with max_length 9 is RESOURCE_EXHAUSTED with a violation on max_length")
  void discoverMaxLengthIsResourceExhausted() {
    DiscoverRequest tooLong = DiscoverRequest.newBuilder().setUniverse(universe).setMaxLength(9).build();
    SegsrvException e = assertThrows(SegsrvException.class, () -> client.discover(tooLong));
    assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.code(), e.getMessage());
    assertEquals("LIMIT_EXCEEDED", e.reason());
    assertTrue(
        e.violations().stream().anyMatch(v -> v.field().equals("max_length")),
        "violations: " + e.violations());
  }

  @Test
  @DisplayName("keepAliveTime below grpcio's 5-minute ping interval is refused")
  void keepAliveFloor() {
    assertThrows(
        IllegalArgumentException.class,
        () -> SegsrvClient.builder("127.0.0.1:1").keepAliveTime(Duration.ofSeconds(30)).build());
    SegsrvClient.builder("127.0.0.1:1").keepAliveTime(Duration.ofMinutes(5)).build().close();
  }
}
