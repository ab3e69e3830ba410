package plugin

import (
	"fmt"
	"slices"
	"time"

	"github.com/keyctl/keyctl/core"
	pb "github.com/keyctl/keyctl/plugin/proto"
)

func stanzaToPB(s core.Stanza) *pb.Stanza {
	return &pb.Stanza{Provider: s.Provider, KeyId: s.KeyID, KeyVersion: s.KeyVersion, Algorithm: uint32(s.Algorithm), Data: s.Data}
}

// stanzaFromPB decodes a stanza; an algorithm code over 255 is malformed.
func stanzaFromPB(s *pb.Stanza) (core.Stanza, error) {
	if s == nil {
		return core.Stanza{}, fmt.Errorf("missing stanza: %w", core.ErrMalformed)
	}
	if s.GetAlgorithm() > 0xff {
		return core.Stanza{}, fmt.Errorf("algorithm code %d: %w", s.GetAlgorithm(), core.ErrUnknownAlgorithm)
	}
	return core.Stanza{
		Provider: s.GetProvider(), KeyID: s.GetKeyId(), KeyVersion: s.GetKeyVersion(),
		Algorithm: core.Algorithm(s.GetAlgorithm()), Data: s.GetData(),
	}, nil
}

func contextToPB(ec core.Context) []*pb.ContextPair {
	if len(ec) == 0 {
		return nil
	}
	out := make([]*pb.ContextPair, 0, len(ec))
	for k, v := range ec {
		out = append(out, &pb.ContextPair{Key: k, Value: v})
	}
	return out
}

// contextFromPB rebuilds a context; a repeated key is malformed (a map
// cannot hold it, and silently keeping one would bind something else).
func contextFromPB(ps []*pb.ContextPair) (core.Context, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	if len(ps) > core.MaxContextPairs {
		return nil, fmt.Errorf("encryption context: %d pairs, limit %d: %w", len(ps), core.MaxContextPairs, core.ErrMalformed)
	}
	ec := make(core.Context, len(ps))
	for _, p := range ps {
		if _, dup := ec[p.GetKey()]; dup {
			return nil, fmt.Errorf("encryption context: key %q repeated: %w", p.GetKey(), core.ErrMalformed)
		}
		ec[p.GetKey()] = p.GetValue()
	}
	return ec, nil
}

func valuesToPB(v Values, s Schema) map[string]*pb.Value {
	out := make(map[string]*pb.Value, len(v))
	for name, x := range v {
		a, _ := s.Attr(name)
		var pv pb.Value
		switch {
		case a.Secret:
			pv.Kind = &pb.Value_SecretValue{SecretValue: x.Secret}
		case a.Type == Number:
			pv.Kind = &pb.Value_NumberValue{NumberValue: x.Num}
		case a.Type == Bool:
			pv.Kind = &pb.Value_BoolValue{BoolValue: x.Bool}
		case a.Type == StringList:
			pv.Kind = &pb.Value_ListValue{ListValue: &pb.StringList{Values: x.List}}
		default:
			pv.Kind = &pb.Value_StringValue{StringValue: x.Str}
		}
		out[name] = &pv
	}
	return out
}

// valuesFromPB decodes the attributes the host sent and checks them
// against the provider's own schema (the host did too; a provider does not
// trust it).
func valuesFromPB(m map[string]*pb.Value, s Schema) (Values, error) {
	out := make(Values, len(m))
	for name, pv := range m {
		a, ok := s.Attr(name)
		if !ok {
			return nil, fmt.Errorf("unknown attribute %q: %w", name, core.ErrMalformed)
		}
		var x Value
		bad := false
		switch k := pv.GetKind().(type) {
		case *pb.Value_SecretValue:
			x.Secret, bad = slices.Clone(k.SecretValue), !a.Secret
		case *pb.Value_StringValue:
			x.Str, bad = k.StringValue, a.Secret || (a.Type != String && a.Type != Path && a.Type != Duration)
			if a.Type == Duration {
				if _, err := time.ParseDuration(k.StringValue); err != nil {
					bad = true
				}
			}
		case *pb.Value_NumberValue:
			x.Num, bad = k.NumberValue, a.Type != Number
		case *pb.Value_BoolValue:
			x.Bool, bad = k.BoolValue, a.Type != Bool
		case *pb.Value_ListValue:
			x.List, bad = k.ListValue.GetValues(), a.Type != StringList
		default:
			bad = true
		}
		if bad {
			return nil, fmt.Errorf("attribute %q: value of the wrong type, want %s: %w", name, a.Type, core.ErrMalformed)
		}
		out[name] = x
	}
	for _, a := range s.Attributes {
		if _, ok := out[a.Name]; a.Required && !ok {
			return nil, fmt.Errorf("attribute %q is required: %w", a.Name, core.ErrMalformed)
		}
	}
	return out, nil
}

func schemaToPB(typ string, s Schema) *pb.SchemaResponse {
	r := &pb.SchemaResponse{ProviderType: typ, ProtocolVersion: ProtocolVersion}
	for _, a := range s.Attributes {
		r.Attributes = append(r.Attributes, &pb.Attribute{
			Name: a.Name, Type: pb.Attribute_Type(a.Type), Required: a.Required, Secret: a.Secret, Description: a.Description,
		})
	}
	return r
}

func schemaFromPB(r *pb.SchemaResponse) (string, Schema, error) {
	var s Schema
	for _, a := range r.GetAttributes() {
		s.Attributes = append(s.Attributes, Attribute{
			Name: a.GetName(), Type: AttrType(a.GetType()), Required: a.GetRequired(), Secret: a.GetSecret(), Description: a.GetDescription(),
		})
	}
	if err := s.Validate(); err != nil {
		return "", Schema{}, err
	}
	return r.GetProviderType(), s, nil
}
