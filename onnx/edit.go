package onnx

import (
	"google.golang.org/protobuf/proto"
)

// Clone returns a deep copy of m, so a rewriter (the quantizer, an
// optimizer) can edit the copy and leave the caller's model untouched.
func Clone(m *ModelProto) *ModelProto { return proto.Clone(m).(*ModelProto) }

// Metadata returns m's metadata_props as a map (nil if there are none).
// If a key repeats, the last value wins, as in ONNX Runtime.
func Metadata(m *ModelProto) map[string]string {
	props := m.GetMetadataProps()
	if len(props) == 0 {
		return nil
	}
	out := make(map[string]string, len(props))
	for _, p := range props {
		out[p.GetKey()] = p.GetValue()
	}
	return out
}

// SetMetadata sets the metadata_props entry key of m, replacing an
// existing value (and dropping duplicates of the key).
func SetMetadata(m *ModelProto, key, value string) {
	found := false
	kept := m.MetadataProps[:0]
	for _, p := range m.MetadataProps {
		if p.GetKey() == key {
			if found {
				continue
			}
			found = true
			p.Value = ptr(value)
		}
		kept = append(kept, p)
	}
	m.MetadataProps = kept
	if !found {
		m.MetadataProps = append(m.MetadataProps, &StringStringEntryProto{Key: ptr(key), Value: ptr(value)})
	}
}

// GetAttr returns n's attribute called name, or nil.
func GetAttr(n *NodeProto, name string) *AttributeProto {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return a
		}
	}
	return nil
}

// AttrInt returns the int attribute name of n, or def if n has none.
func AttrInt(n *NodeProto, name string, def int64) int64 {
	if a := GetAttr(n, name); a != nil && a.GetType() == AttributeProto_INT {
		return a.GetI()
	}
	return def
}

// AttrFloat returns the float attribute name of n, or def if n has none.
func AttrFloat(n *NodeProto, name string, def float32) float32 {
	if a := GetAttr(n, name); a != nil && a.GetType() == AttributeProto_FLOAT {
		return a.GetF()
	}
	return def
}

// AttrInts returns the ints attribute name of n, or nil if n has none.
func AttrInts(n *NodeProto, name string) []int64 {
	if a := GetAttr(n, name); a != nil && a.GetType() == AttributeProto_INTS {
		return a.GetInts()
	}
	return nil
}

// AttrString returns the string attribute name of n, or def if n has none.
func AttrString(n *NodeProto, name string, def string) string {
	if a := GetAttr(n, name); a != nil && a.GetType() == AttributeProto_STRING {
		return string(a.GetS())
	}
	return def
}

// SetAttr adds or replaces an attribute of n; value types are those of
// Attr.
func SetAttr(n *NodeProto, name string, value any) error {
	a, err := NewAttr(name, value)
	if err != nil {
		return err
	}
	for i, old := range n.Attribute {
		if old.GetName() == name {
			n.Attribute[i] = a
			return nil
		}
	}
	n.Attribute = append(n.Attribute, a)
	return nil
}
