package segsrv_test

// Integration tests against a running server: SEGSRV_ADDR (host:port) serving the PetNord
// snapshot, checked against clients/fixtures/petnord_expected.json (SEGSRV_FIXTURE
// overrides its path), whose figures DuckDB computed from the source data.
// scripts/clients_test.sh starts the server and sets both.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"segsrv.dev/clients/go/segsrv"
	pb "segsrv.dev/clients/go/segsrvv1"
)

type fixture struct {
	Snapshot   string `json:"snapshot"`
	Universe   string `json:"universe"`
	NCustomers int64  `json:"n_customers"`
	KnownID    string `json:"known_id"`
	UnknownID  string `json:"unknown_id"`
	Counts     []struct {
		Description string          `json:"description"`
		Condition   json.RawMessage `json:"condition"`
		Count       int64           `json:"count"`
	} `json:"counts"`
	Relate struct {
		Condition      json.RawMessage `json:"condition"`
		Fields         []string        `json:"fields"`
		ConditionCount int64           `json:"condition_count"`
		Hits           []struct {
			Value        string  `json:"value"`
			Support      int64   `json:"support"`
			FeatureCount int64   `json:"feature_count"`
			Lift         float64 `json:"lift"`
		} `json:"hits"`
	} `json:"relate"`
	Predict struct {
		TargetField string   `json:"target_field"`
		Values      []string `json:"values"`
	} `json:"predict"`
	Assign struct {
		Segments []struct {
			Name     string `json:"name"`
			Priority int32  `json:"priority"`
			Size     int64  `json:"size"`
		} `json:"segments"`
		IDs         []string            `json:"ids"`
		Assignments []assignmentFixture `json:"assignments"`
		Features    struct {
			Terms []struct {
				Field string `json:"field"`
				Value string `json:"value"`
			} `json:"terms"`
			Members        []string `json:"members"`
			PrimarySegment string   `json:"primary_segment"`
		} `json:"features"`
	} `json:"assign"`
	Discover struct {
		Fields       []string         `json:"fields"`
		MaxLength    int32            `json:"max_length"`
		Limit        int32            `json:"limit"`
		K            int32            `json:"k"`
		Target       json.RawMessage  `json:"target"`
		TargetCount  int64            `json:"target_count"`
		Counts       map[string]int64 `json:"counts"`
		TargetCounts map[string]int64 `json:"target_counts"`
	} `json:"discover"`
}

type assignmentFixture struct {
	ID             string   `json:"id"`
	Found          bool     `json:"found"`
	Members        []string `json:"members"`
	PrimarySegment string   `json:"primary_segment"`
}

func setup(t *testing.T) (*segsrv.Client, *fixture) {
	t.Helper()
	addr := os.Getenv("SEGSRV_ADDR")
	if addr == "" {
		t.Skip("SEGSRV_ADDR is not set: these tests need a running segsrv serving PetNord (bash scripts/clients_test.sh starts one)")
	}
	path := os.Getenv("SEGSRV_FIXTURE")
	if path == "" {
		path = filepath.Join("..", "..", "fixtures", "petnord_expected.json")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the fixture: %v", err)
	}
	var fx fixture
	if err := json.Unmarshal(raw, &fx); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	c, err := segsrv.Dial(addr, segsrv.WithTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, &fx
}

// condition parses a fixture condition (proto3 JSON) into a segsrvv1.Condition.
func condition(t *testing.T, raw json.RawMessage) *pb.Condition {
	t.Helper()
	var cond pb.Condition
	if err := protojson.Unmarshal(raw, &cond); err != nil {
		t.Fatalf("condition %s: %v", raw, err)
	}
	return &cond
}

func relClose(got, want, tol float64) bool {
	return math.Abs(got-want) <= tol*math.Max(math.Abs(want), math.Abs(got))
}

func TestHealth(t *testing.T) {
	c, _ := setup(t)
	for _, service := range []string{"", "segsrv.v1.SegmentationService"} {
		st, err := c.Health(context.Background(), service)
		if err != nil {
			t.Fatalf("health %q: %v", service, err)
		}
		if st.String() != "SERVING" {
			t.Errorf("health %q = %s, want SERVING", service, st)
		}
	}
}

func TestSnapshotInfo(t *testing.T) {
	c, fx := setup(t)
	res, err := c.SnapshotInfo(context.Background(), "", false)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.GetInfo().GetSnapshotName(); got != fx.Snapshot {
		t.Errorf("snapshot name = %q, want %q", got, fx.Snapshot)
	}
	if res.GetInfo().GetSnapshotVersion() == "" {
		t.Error("snapshot version is empty")
	}
	var found bool
	for _, u := range res.GetUniverses() {
		if u.GetName() == fx.Universe {
			found = true
			if u.GetRowCount() != fx.NCustomers {
				t.Errorf("universe %s has %d rows, want n_customers = %d", u.GetName(), u.GetRowCount(), fx.NCustomers)
			}
		}
	}
	if !found {
		t.Errorf("no universe %q in %v", fx.Universe, res.GetUniverses())
	}
}

func TestCount(t *testing.T) {
	c, fx := setup(t)
	if len(fx.Counts) == 0 {
		t.Fatal("the fixture has no counts")
	}
	for _, want := range fx.Counts {
		t.Run(want.Description, func(t *testing.T) {
			res, err := c.Count(context.Background(), fx.Universe, condition(t, want.Condition))
			if err != nil {
				t.Fatal(err)
			}
			if res.GetCount() != want.Count {
				t.Errorf("count = %d, want %d", res.GetCount(), want.Count)
			}
			if res.GetRowCount() != fx.NCustomers {
				t.Errorf("row_count = %d, want %d", res.GetRowCount(), fx.NCustomers)
			}
			if res.GetUniverse() != fx.Universe {
				t.Errorf("universe = %q, want %q", res.GetUniverse(), fx.Universe)
			}
		})
	}
}

func TestCountBuilders(t *testing.T) {
	// The builders give the same conditions as the fixture's JSON.
	c, fx := setup(t)
	conds := []*pb.Condition{
		segsrv.Term("churned", "true"),
		segsrv.And(segsrv.Term("pet_size", "large"), segsrv.Term("region", "helsinki")),
		segsrv.And(segsrv.In("region", "helsinki", "espoo"), segsrv.Not(segsrv.Term("churned", "true"))),
	}
	if len(conds) != len(fx.Counts) {
		t.Fatalf("the fixture has %d counts, the test builds %d", len(fx.Counts), len(conds))
	}
	for i, cond := range conds {
		res, err := c.Count(context.Background(), fx.Universe, cond)
		if err != nil {
			t.Fatal(err)
		}
		if res.GetCount() != fx.Counts[i].Count {
			t.Errorf("%s: count = %d, want %d", fx.Counts[i].Description, res.GetCount(), fx.Counts[i].Count)
		}
	}
	res, err := c.Count(context.Background(), fx.Universe, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.GetCount() != fx.NCustomers {
		t.Errorf("count of every row = %d, want %d", res.GetCount(), fx.NCustomers)
	}
}

func TestRelate(t *testing.T) {
	c, fx := setup(t)
	res, err := c.Relate(context.Background(), &pb.RelateRequest{
		Universe:  fx.Universe,
		Condition: condition(t, fx.Relate.Condition),
		Fields:    fx.Relate.Fields,
		Direction: pb.RelateDirection_RELATE_DIRECTION_ALL,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetConditionCount() != fx.Relate.ConditionCount {
		t.Errorf("condition_count = %d, want %d", res.GetConditionCount(), fx.Relate.ConditionCount)
	}
	if res.GetRowCount() != fx.NCustomers {
		t.Errorf("row_count = %d, want %d", res.GetRowCount(), fx.NCustomers)
	}
	hits := map[string]*pb.RelateHit{}
	for _, h := range res.GetHits() {
		if h.GetField() != "region" {
			t.Errorf("hit on field %q, only region was asked for", h.GetField())
		}
		hits[h.GetValue()] = h
	}
	if len(hits) != len(fx.Relate.Hits) {
		got := make([]string, 0, len(hits))
		for v := range hits {
			got = append(got, v)
		}
		sort.Strings(got)
		t.Errorf("%d hits %v, want %d", len(hits), got, len(fx.Relate.Hits))
	}
	for _, want := range fx.Relate.Hits {
		h, ok := hits[want.Value]
		if !ok {
			t.Errorf("no hit for region = %s", want.Value)
			continue
		}
		if h.GetSupport() != want.Support {
			t.Errorf("region = %s: support = %d, want %d", want.Value, h.GetSupport(), want.Support)
		}
		if h.GetFeatureCount() != want.FeatureCount {
			t.Errorf("region = %s: feature_count = %d, want %d", want.Value, h.GetFeatureCount(), want.FeatureCount)
		}
		if !relClose(h.GetLift(), want.Lift, 1e-9) {
			t.Errorf("region = %s: lift = %.17g, want %.17g (1e-9 relative)", want.Value, h.GetLift(), want.Lift)
		}
	}
}

func TestPredict(t *testing.T) {
	c, fx := setup(t)
	res, err := c.Predict(context.Background(), &pb.PredictRequest{
		Universe:    fx.Universe,
		TargetField: fx.Predict.TargetField,
		Id:          fx.KnownID,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetMultiValued() {
		t.Errorf("%s is reported multi-valued", fx.Predict.TargetField)
	}
	var values []string
	sum := 0.0
	for _, p := range res.GetProbabilities() {
		values = append(values, p.GetValue())
		sum += p.GetProbability()
		if p.GetProbability() <= 0 || p.GetProbability() >= 1 {
			t.Errorf("P(%s) = %g is not in (0, 1)", p.GetValue(), p.GetProbability())
		}
		// The explanation: base_probability * product(factors) / normalizer == probability.
		e := p.GetExplanation()
		if e == nil || len(e.GetFactors()) == 0 {
			t.Errorf("P(%s) has no explanation factors", p.GetValue())
			continue
		}
		product := e.GetBaseProbability()
		for _, f := range e.GetFactors() {
			product *= f.GetFactor()
		}
		product /= e.GetNormalizer()
		if !relClose(product, p.GetProbability(), 1e-9) {
			t.Errorf("P(%s): base * product(factors) / normalizer = %.17g, probability = %.17g",
				p.GetValue(), product, p.GetProbability())
		}
	}
	sort.Strings(values)
	want := append([]string(nil), fx.Predict.Values...)
	sort.Strings(want)
	if len(values) != len(want) {
		t.Fatalf("values %v, want %v", values, want)
	}
	for i := range want {
		if values[i] != want[i] {
			t.Fatalf("values %v, want %v", values, want)
		}
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Errorf("probabilities sum to %.17g, want 1", sum)
	}
	if len(res.GetEvidence()) == 0 {
		t.Error("no evidence used for a known id")
	}
}

// The default method is logistic (issue 15): its penalty is reported, cross-validated unless the
// caller sets l2 (an optional field of the request), which is then used as given.
func TestPredictDefaultIsLogisticAndTakesTheCallersL2(t *testing.T) {
	c, fx := setup(t)
	res, err := c.Predict(context.Background(), &pb.PredictRequest{
		Universe: fx.Universe, TargetField: fx.Predict.TargetField, Id: fx.KnownID,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := res.GetRegularisation(); len(r) != 1 || !r[0].GetCrossValidated() || r[0].GetL2() <= 0 {
		t.Fatalf("default regularisation = %v, want one cross-validated penalty", r)
	}
	l2 := 3.0
	res, err = c.Predict(context.Background(), &pb.PredictRequest{
		Universe: fx.Universe, TargetField: fx.Predict.TargetField, Id: fx.KnownID, L2: &l2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := res.GetRegularisation(); len(r) != 1 || r[0].GetCrossValidated() || r[0].GetL2() != 3 {
		t.Fatalf("regularisation with l2 = 3: %v, want l2 3 given by the caller", r)
	}
}

func TestCountUnknownFieldIsInvalidArgument(t *testing.T) {
	c, fx := setup(t)
	_, err := c.Count(context.Background(), fx.Universe, segsrv.Term("regoin", "helsinki"))
	if code := status.Code(err); code != codes.InvalidArgument {
		t.Fatalf("code = %s (%v), want InvalidArgument", code, err)
	}
	var e *segsrv.Error
	if !errors.As(err, &e) {
		t.Fatalf("%T is not *segsrv.Error", err)
	}
	if e.Reason != "UNKNOWN_FIELD" {
		t.Errorf("reason = %q, want UNKNOWN_FIELD", e.Reason)
	}
	if len(e.Violations) == 0 || e.Violations[0].Field != "condition.term.field" {
		t.Errorf("violations = %+v, want one on condition.term.field", e.Violations)
	}
}

func TestPredictUnknownIDIsNotFound(t *testing.T) {
	c, fx := setup(t)
	_, err := c.Predict(context.Background(), &pb.PredictRequest{
		Universe: fx.Universe, TargetField: fx.Predict.TargetField, Id: fx.UnknownID,
	})
	if code := status.Code(err); code != codes.NotFound {
		t.Fatalf("code = %s (%v), want NotFound", code, err)
	}
}

// checkAssignment compares one assignment of a found customer with the fixture: every catalog
// segment listed once with its size, share and priority; the member set; the primary segment.
func checkAssignment(t *testing.T, fx *fixture, what string, got *pb.Assignment, members []string, primary string) {
	t.Helper()
	want := map[string]int{}
	for i, s := range fx.Assign.Segments {
		want[s.Name] = i
	}
	if n := len(got.GetSegments()); n != len(want) {
		t.Errorf("%s: %d segments, want %d (every catalog segment)", what, n, len(want))
	}
	seen := map[string]bool{}
	gotMembers := []string{}
	for _, m := range got.GetSegments() {
		i, ok := want[m.GetSegment()]
		if !ok || seen[m.GetSegment()] {
			t.Errorf("%s: unexpected or repeated segment %q", what, m.GetSegment())
			continue
		}
		seen[m.GetSegment()] = true
		s := fx.Assign.Segments[i]
		if m.GetSegmentSize() != s.Size {
			t.Errorf("%s: segment %s size = %d, want %d", what, s.Name, m.GetSegmentSize(), s.Size)
		}
		if share := float64(s.Size) / float64(fx.NCustomers); !relClose(m.GetShare(), share, 1e-9) {
			t.Errorf("%s: segment %s share = %v, want %v", what, s.Name, m.GetShare(), share)
		}
		if m.GetPriority() != s.Priority {
			t.Errorf("%s: segment %s priority = %d, want %d", what, s.Name, m.GetPriority(), s.Priority)
		}
		if m.GetMember() {
			gotMembers = append(gotMembers, m.GetSegment())
		}
	}
	sort.Strings(gotMembers)
	if strings.Join(gotMembers, ",") != strings.Join(members, ",") {
		t.Errorf("%s: members = %v, want %v", what, gotMembers, members)
	}
	if got.GetPrimarySegment() != primary {
		t.Errorf("%s: primary segment = %q, want %q", what, got.GetPrimarySegment(), primary)
	}
}

func TestAssign(t *testing.T) {
	c, fx := setup(t)
	if len(fx.Assign.IDs) == 0 {
		t.Fatal("the fixture has no assign section")
	}
	res, err := c.Assign(context.Background(), &pb.AssignRequest{Universe: fx.Universe, Ids: fx.Assign.IDs, IncludePropensities: true})
	if err != nil {
		t.Fatal(err) // UNIMPLEMENTED included: the server has Assign
	}
	if res.GetUniverse() != fx.Universe {
		t.Errorf("universe = %q, want %q", res.GetUniverse(), fx.Universe)
	}
	as := res.GetAssignments()
	if len(as) != len(fx.Assign.Assignments) {
		t.Fatalf("%d assignments, want %d (one per id, in order)", len(as), len(fx.Assign.Assignments))
	}
	for i, want := range fx.Assign.Assignments {
		got := as[i]
		if got.GetId() != want.ID || got.GetFound() != want.Found {
			t.Errorf("assignment %d = {id %q, found %v}, want {%q, %v}", i, got.GetId(), got.GetFound(), want.ID, want.Found)
			continue
		}
		if !want.Found {
			if len(got.GetSegments()) != 0 || got.GetPrimarySegment() != "" {
				t.Errorf("%s (unknown): segments %v, primary %q, want none", want.ID, got.GetSegments(), got.GetPrimarySegment())
			}
			continue
		}
		checkAssignment(t, fx, want.ID, got, want.Members, want.PrimarySegment)
	}
}

func TestAssignFeatures(t *testing.T) {
	c, fx := setup(t)
	f := fx.Assign.Features
	if len(f.Terms) == 0 {
		t.Fatal("the fixture has no assign.features")
	}
	req := &pb.AssignRequest{Universe: fx.Universe, IncludePropensities: true}
	for _, term := range f.Terms {
		req.Features = append(req.Features, &pb.Term{Field: term.Field, Value: term.Value})
	}
	res, err := c.Assign(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetAssignments()) != 1 {
		t.Fatalf("%d assignments, want 1 for a feature list", len(res.GetAssignments()))
	}
	got := res.GetAssignments()[0]
	if got.GetId() != "" || !got.GetFound() {
		t.Errorf("feature-list assignment = {id %q, found %v}, want {\"\", true}", got.GetId(), got.GetFound())
	}
	checkAssignment(t, fx, "features", got, f.Members, f.PrimarySegment)
}

func TestDeadline(t *testing.T) {
	c, fx := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	time.Sleep(time.Millisecond)
	_, err := c.Count(ctx, fx.Universe, nil)
	if code := status.Code(err); code != codes.DeadlineExceeded {
		t.Fatalf("code = %s (%v), want DeadlineExceeded", code, err)
	}
}

// privacyFloor is the server's default privacy floor (k = 10): no segment has fewer rows.
const privacyFloor = 10

// discoverKey is the fixture's key of a conjunction: its terms as field=value, sorted, joined
// with " & " (the discover section's counts and target_counts).
func discoverKey(terms []*pb.Term) string {
	parts := make([]string, len(terms))
	for i, t := range terms {
		parts[i] = t.GetField() + "=" + t.GetValue()
	}
	sort.Strings(parts)
	return strings.Join(parts, " & ")
}

// fixtureCount is the fixture's count of the customers having every term of terms (0 when the
// conjunction is not listed: no customer has it).
func fixtureCount(counts map[string]int64, terms []*pb.Term) int64 { return counts[discoverKey(terms)] }

// checkDiscoveredCommon checks what every discovered segment has, with or without a target:
// 1..maxLength terms on the requested fields, support at or above the privacy floor and as the
// fixture counts it (DuckDB), share = support / row_count, q-value <= 0.05 (the default) and at
// least the p-value, a name and a description.
func checkDiscoveredCommon(t *testing.T, fx *fixture, what string, s *pb.DiscoveredSegment, rowCount int64) {
	t.Helper()
	d := fx.Discover
	fields := map[string]bool{}
	for _, f := range d.Fields {
		fields[f] = true
	}
	if n := len(s.GetTerms()); n < 1 || n > int(d.MaxLength) {
		t.Errorf("%s: %d terms, want 1..%d", what, n, d.MaxLength)
	}
	for _, term := range s.GetTerms() {
		if !fields[term.GetField()] {
			t.Errorf("%s: term on field %q, not among the requested %v", what, term.GetField(), d.Fields)
		}
	}
	if s.GetSupport() < privacyFloor {
		t.Errorf("%s: support %d is below the privacy floor %d", what, s.GetSupport(), privacyFloor)
	}
	if want := fixtureCount(d.Counts, s.GetTerms()); s.GetSupport() != want {
		t.Errorf("%s: support = %d, the fixture (DuckDB) counts %d", what, s.GetSupport(), want)
	}
	if s.GetShare() <= 0 || s.GetShare() > 1 {
		t.Errorf("%s: share %v is not in (0, 1]", what, s.GetShare())
	}
	if want := float64(s.GetSupport()) / float64(rowCount); !relClose(s.GetShare(), want, 1e-9) {
		t.Errorf("%s: share = %v, want support / row_count = %v", what, s.GetShare(), want)
	}
	if q := s.GetQValue(); q > 0.05 || q < s.GetPValue() || s.GetPValue() < 0 {
		t.Errorf("%s: p-value %g, q-value %g: want 0 <= p <= q <= 0.05", what, s.GetPValue(), q)
	}
	if s.GetName() == "" || s.GetDescription() == "" {
		t.Errorf("%s: name %q, description %q: want both", what, s.GetName(), s.GetDescription())
	}
}

func TestDiscover(t *testing.T) {
	c, fx := setup(t)
	d := fx.Discover
	if len(d.Fields) == 0 {
		t.Fatal("the fixture has no discover section")
	}
	res, err := c.Discover(context.Background(), &pb.DiscoverRequest{
		Universe: fx.Universe, Fields: d.Fields, MaxLength: d.MaxLength, Limit: d.Limit,
	})
	if err != nil {
		t.Fatal(err) // UNIMPLEMENTED included
	}
	if res.GetUniverse() != fx.Universe || res.GetRowCount() != fx.NCustomers || res.GetSuppressed() {
		t.Errorf("universe %q, row_count %d, suppressed %v: want %q, %d, false",
			res.GetUniverse(), res.GetRowCount(), res.GetSuppressed(), fx.Universe, fx.NCustomers)
	}
	if res.GetTargetCount() != 0 || res.GetSegmentation() != nil {
		t.Errorf("target_count %d, segmentation %v: want none without a target and k", res.GetTargetCount(), res.GetSegmentation())
	}
	segs := res.GetSegments()
	if len(segs) == 0 || len(segs) > int(d.Limit) {
		t.Fatalf("%d segments, want 1..%d", len(segs), d.Limit)
	}
	n := float64(res.GetRowCount())
	for i, s := range segs {
		what := fmt.Sprintf("segment %d (%s)", i, discoverKey(s.GetTerms()))
		checkDiscoveredCommon(t, fx, what, s, res.GetRowCount())
		if len(s.GetTerms()) < 2 {
			t.Errorf("%s: %d terms, want at least 2 without a target", what, len(s.GetTerms()))
		}
		if s.GetDirection() != "" || s.GetTargetSupport() != 0 {
			t.Errorf("%s: direction %q, target_support %d without a target", what, s.GetDirection(), s.GetTargetSupport())
		}
		// lift: observed over what independence of the terms predicts, from the fixture's counts
		expected := n
		for _, term := range s.GetTerms() {
			expected *= float64(fixtureCount(d.Counts, []*pb.Term{term})) / n
		}
		if s.GetLift() <= 1 || !relClose(s.GetLift(), float64(s.GetSupport())/expected, 1e-9) {
			t.Errorf("%s: lift = %.17g, want support / independence = %.17g (> 1)", what, s.GetLift(), float64(s.GetSupport())/expected)
		}
		// adjust_for_activity defaults to true: an adjusted lift (NaN would mean not adjusted)
		if a := s.GetAdjustedLift(); math.IsNaN(a) || math.IsInf(a, 0) || a <= 0 {
			t.Errorf("%s: adjusted_lift = %v, want a positive number (activity adjustment is on by default)", what, a)
		}
		if len(s.GetTerms()) == 2 && !relClose(s.GetSplitLift(), s.GetLift(), 1e-9) {
			t.Errorf("%s: split_lift = %.17g, want the lift %.17g (a pair has one split)", what, s.GetSplitLift(), s.GetLift())
		}
		// the returned condition selects the segment: Count agrees with the support
		if i < 3 {
			cnt, err := c.Count(context.Background(), fx.Universe, s.GetCondition())
			if err != nil {
				t.Fatalf("%s: count of its condition: %v", what, err)
			}
			if cnt.GetCount() != s.GetSupport() {
				t.Errorf("%s: Count(condition) = %d, support = %d", what, cnt.GetCount(), s.GetSupport())
			}
		}
	}
}

func TestDiscoverTarget(t *testing.T) {
	c, fx := setup(t)
	d := fx.Discover
	if len(d.Fields) == 0 {
		t.Fatal("the fixture has no discover section")
	}
	var churned int64 = -1
	for _, cnt := range fx.Counts {
		if cnt.Description == "churned = true" {
			churned = cnt.Count
		}
	}
	if churned < 0 || churned != d.TargetCount {
		t.Fatalf("the fixture's churned count %d and discover.target_count %d disagree", churned, d.TargetCount)
	}
	res, err := c.Discover(context.Background(), &pb.DiscoverRequest{
		Universe: fx.Universe, Fields: d.Fields, MaxLength: d.MaxLength,
		Target: segsrv.Term("churned", "true"), K: d.K,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetRowCount() != fx.NCustomers || res.GetTargetCount() != churned {
		t.Errorf("row_count %d, target_count %d: want %d, %d", res.GetRowCount(), res.GetTargetCount(), fx.NCustomers, churned)
	}
	segs := res.GetSegments()
	if len(segs) == 0 {
		t.Fatal("no segments")
	}
	rate := float64(res.GetTargetCount()) / float64(res.GetRowCount())
	for i, s := range segs {
		what := fmt.Sprintf("segment %d (%s, %s)", i, discoverKey(s.GetTerms()), s.GetDirection())
		checkDiscoveredCommon(t, fx, what, s, res.GetRowCount())
		if want := fixtureCount(d.TargetCounts, s.GetTerms()); s.GetTargetSupport() != want {
			t.Errorf("%s: target_support = %d, the fixture (DuckDB) counts %d", what, s.GetTargetSupport(), want)
		}
		segRate := float64(s.GetTargetSupport()) / float64(s.GetSupport())
		if !relClose(s.GetTargetRate(), segRate, 1e-9) {
			t.Errorf("%s: target_rate = %v, want target_support / support = %v", what, s.GetTargetRate(), segRate)
		}
		if !relClose(s.GetLift(), segRate/rate, 1e-9) {
			t.Errorf("%s: lift = %v, want the segment's rate over the overall rate = %v", what, s.GetLift(), segRate/rate)
		}
		switch s.GetDirection() {
		case "high":
			if s.GetLift() <= 1 {
				t.Errorf("%s: lift %v is not above 1", what, s.GetLift())
			}
		case "low":
			if s.GetLift() >= 1 {
				t.Errorf("%s: lift %v is not below 1", what, s.GetLift())
			}
		default:
			t.Errorf("%s: direction %q, want high or low", what, s.GetDirection())
		}
	}
	g := res.GetSegmentation()
	if g == nil {
		t.Fatalf("no segmentation with k = %d", d.K)
	}
	if n := len(g.GetPersonas()); n == 0 || n > int(d.K) {
		t.Errorf("%d personas, want 1..%d", n, d.K)
	}
	if g.GetCovered()+g.GetOther() != res.GetRowCount() {
		t.Errorf("covered %d + other %d != row_count %d", g.GetCovered(), g.GetOther(), res.GetRowCount())
	}
	if want := float64(g.GetCovered()) / float64(res.GetRowCount()); !relClose(g.GetCoverage(), want, 1e-9) {
		t.Errorf("coverage = %v, want covered / row_count = %v", g.GetCoverage(), want)
	}
	if g.GetOverlap() < 0 || g.GetOverlap() > g.GetCovered() {
		t.Errorf("overlap %d is not within 0..covered (%d)", g.GetOverlap(), g.GetCovered())
	}
	var gains, primaries int64
	seen := map[int32]bool{}
	for _, p := range g.GetPersonas() {
		if p.GetSegment() < 0 || int(p.GetSegment()) >= len(segs) || seen[p.GetSegment()] {
			t.Errorf("persona on segment %d: out of range or repeated (%d segments)", p.GetSegment(), len(segs))
			continue
		}
		seen[p.GetSegment()] = true
		gains += p.GetGain()
		primaries += p.GetPrimary()
	}
	if gains != g.GetCovered() || primaries != g.GetCovered() {
		t.Errorf("personas' gains sum to %d, primaries to %d: want covered = %d", gains, primaries, g.GetCovered())
	}
}

func TestDiscoverMaxLengthIsResourceExhausted(t *testing.T) {
	c, fx := setup(t)
	_, err := c.Discover(context.Background(), &pb.DiscoverRequest{Universe: fx.Universe, MaxLength: 9})
	if code := status.Code(err); code != codes.ResourceExhausted {
		t.Fatalf("code = %s (%v), want ResourceExhausted", code, err)
	}
	var e *segsrv.Error
	if !errors.As(err, &e) {
		t.Fatalf("%T is not *segsrv.Error", err)
	}
	if e.Reason != "LIMIT_EXCEEDED" {
		t.Errorf("reason = %q, want LIMIT_EXCEEDED", e.Reason)
	}
	if len(e.Violations) == 0 || e.Violations[0].Field != "max_length" {
		t.Errorf("violations = %+v, want one on max_length", e.Violations)
	}
}
