package starlark

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	sk "go.starlark.net/starlark"
)

// Instance is one host of the hive as a policy sees it. The policy gets a
// read-only Starlark value of type "instance" with the attributes name,
// system, host, store, jump (strings, "" when unset), tags (a tuple of
// strings) and meta (a frozen dict, empty when the hive gives none).
type Instance struct {
	Name   string
	System string
	Host   string
	Store  string // instance name or Nix store URL the instance substitutes from; "" for none
	Jump   string // instance the host is reached through; "" for direct
	Tags   []string
	// Meta is the hive's free-form meta attrset as decoded from JSON:
	// map[string]any, []any, string, float64 (integral values become
	// Starlark ints), bool or nil. int, int64 and json.Number are accepted too.
	Meta map[string]any
}

// instanceValue is the Starlark view of an Instance. It is immutable, so it
// may be shared by threads, and it compares and hashes by name so that
// `i in list` and dict keys work as users expect.
type instanceValue struct {
	inst  *Instance
	index int // position in the slice passed to the policy call
	tags  sk.Tuple
	meta  *sk.Dict
}

var (
	_ sk.HasAttrs       = (*instanceValue)(nil)
	_ sk.TotallyOrdered = (*instanceValue)(nil)
)

func newInstanceValue(inst *Instance, index int) (*instanceValue, error) {
	tags := make(sk.Tuple, len(inst.Tags))
	for i, t := range inst.Tags {
		tags[i] = sk.String(t)
	}
	meta := sk.NewDict(len(inst.Meta))
	for _, k := range slices.Sorted(maps.Keys(inst.Meta)) {
		v, err := fromJSON(inst.Meta[k], "meta."+k)
		if err != nil {
			return nil, fmt.Errorf("instance %s: %w", inst.Name, err)
		}
		if err := meta.SetKey(sk.String(k), v); err != nil {
			return nil, fmt.Errorf("instance %s: meta.%s: %w", inst.Name, k, err)
		}
	}
	meta.Freeze()
	return &instanceValue{inst: inst, index: index, tags: tags, meta: meta}, nil
}

func (v *instanceValue) String() string        { return fmt.Sprintf("instance(%q)", v.inst.Name) }
func (v *instanceValue) Type() string          { return "instance" }
func (v *instanceValue) Freeze()               {} // immutable from birth
func (v *instanceValue) Truth() sk.Bool        { return sk.True }
func (v *instanceValue) Hash() (uint32, error) { return sk.String(v.inst.Name).Hash() }

func (v *instanceValue) Cmp(y sk.Value, depth int) (int, error) {
	return strings.Compare(v.inst.Name, y.(*instanceValue).inst.Name), nil
}

var instanceAttrs = []string{"host", "jump", "meta", "name", "store", "system", "tags"}

func (v *instanceValue) AttrNames() []string { return instanceAttrs }

func (v *instanceValue) Attr(name string) (sk.Value, error) {
	switch name {
	case "name":
		return sk.String(v.inst.Name), nil
	case "system":
		return sk.String(v.inst.System), nil
	case "host":
		return sk.String(v.inst.Host), nil
	case "store":
		return sk.String(v.inst.Store), nil
	case "jump":
		return sk.String(v.inst.Jump), nil
	case "tags":
		return v.tags, nil
	case "meta":
		return v.meta, nil
	}
	return nil, nil // the interpreter reports "instance has no .x field or method"
}

func (v *instanceValue) hasTag(tag string) bool {
	for _, t := range v.inst.Tags {
		if t == tag {
			return true
		}
	}
	return false
}

// fromJSON converts a JSON-decoded Go value into a frozen Starlark value.
func fromJSON(x any, path string) (sk.Value, error) {
	switch x := x.(type) {
	case nil:
		return sk.None, nil
	case bool:
		return sk.Bool(x), nil
	case string:
		return sk.String(x), nil
	case int:
		return sk.MakeInt(x), nil
	case int64:
		return sk.MakeInt64(x), nil
	case float64:
		// Nix integers arrive as JSON numbers; users expect ints back.
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return sk.MakeInt64(int64(x)), nil
		}
		return sk.Float(x), nil
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return sk.MakeInt64(i), nil
		}
		f, err := x.Float64()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return sk.Float(f), nil
	case []string:
		elems := make([]any, len(x))
		for i, s := range x {
			elems[i] = s
		}
		return listFromJSON(elems, path)
	case []any:
		return listFromJSON(x, path)
	case map[string]any:
		return dictFromJSON(x, path)
	}
	return nil, fmt.Errorf("%s: unsupported type %T", path, x)
}

func listFromJSON(x []any, path string) (sk.Value, error) {
	elems := make([]sk.Value, len(x))
	for i, e := range x {
		v, err := fromJSON(e, fmt.Sprintf("%s[%d]", path, i))
		if err != nil {
			return nil, err
		}
		elems[i] = v
	}
	l := sk.NewList(elems)
	l.Freeze()
	return l, nil
}

func dictFromJSON(x map[string]any, path string) (sk.Value, error) {
	d := sk.NewDict(len(x))
	for _, k := range slices.Sorted(maps.Keys(x)) {
		v, err := fromJSON(x[k], path+"."+k)
		if err != nil {
			return nil, err
		}
		if err := d.SetKey(sk.String(k), v); err != nil {
			return nil, fmt.Errorf("%s.%s: %w", path, k, err)
		}
	}
	d.Freeze()
	return d, nil
}

// instanceValues converts in for one policy call and indexes it by name.
func instanceValues(in []Instance) ([]*instanceValue, map[string]int, error) {
	vals := make([]*instanceValue, len(in))
	byName := make(map[string]int, len(in))
	for i := range in {
		if _, dup := byName[in[i].Name]; dup {
			return nil, nil, fmt.Errorf("instance %q given twice", in[i].Name)
		}
		byName[in[i].Name] = i
		v, err := newInstanceValue(&in[i], i)
		if err != nil {
			return nil, nil, err
		}
		vals[i] = v
	}
	return vals, byName, nil
}
