package segsrv

import pb "segsrv.dev/clients/go/segsrvv1"

// Term is the condition "field = value" (values as text: "true", "42", "25-35").
func Term(field, value string) *pb.Condition {
	return &pb.Condition{Kind: &pb.Condition_Term{Term: &pb.Term{Field: field, Value: value}}}
}

// In is the condition "field has at least one of values".
func In(field string, values ...string) *pb.Condition {
	return &pb.Condition{Kind: &pb.Condition_ValueSet{ValueSet: &pb.ValueSet{Field: field, Values: values}}}
}

// And is the conjunction of conds.
func And(conds ...*pb.Condition) *pb.Condition {
	return &pb.Condition{Kind: &pb.Condition_AllOf{AllOf: &pb.ConditionList{Conditions: conds}}}
}

// Or is the disjunction of conds.
func Or(conds ...*pb.Condition) *pb.Condition {
	return &pb.Condition{Kind: &pb.Condition_AnyOf{AnyOf: &pb.ConditionList{Conditions: conds}}}
}

// Not is the negation of cond (rows without the field match).
func Not(cond *pb.Condition) *pb.Condition {
	return &pb.Condition{Kind: &pb.Condition_Negation{Negation: cond}}
}

// Segment refers to a named segment of the snapshot's catalog.
func Segment(name string) *pb.Condition {
	return &pb.Condition{Kind: &pb.Condition_Segment{Segment: &pb.SegmentReference{Name: name}}}
}

// AllRows is every row of the universe.
func AllRows() *pb.Condition {
	return &pb.Condition{Kind: &pb.Condition_AllRows{AllRows: &pb.AllRows{}}}
}

// Range is a numeric range on a field with raw values; nil bounds are open.
// Use Float to take the address of a literal: Range("tenure_months", Float(12), nil, nil, Float(24)).
func Range(field string, gte, gt, lte, lt *float64) *pb.Condition {
	return &pb.Condition{Kind: &pb.Condition_NumericRange{NumericRange: &pb.NumericRange{
		Field: field, Gte: gte, Gt: gt, Lte: lte, Lt: lt,
	}}}
}

// Float returns a pointer to v, for optional fields and Range bounds.
func Float(v float64) *float64 { return &v }

// Int returns a pointer to v, for optional int64 fields (min_support).
func Int(v int64) *int64 { return &v }
