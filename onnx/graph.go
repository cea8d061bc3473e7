package onnx

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// maxCheckErrors bounds the number of problems Check reports, so a badly
// broken graph gives a readable error.
const maxCheckErrors = 10

// ErrInvalidModel is wrapped by every error Check returns.
var ErrInvalidModel = errors.New("onnx: invalid model")

// Check validates the structure of a model: an IR version and a default
// opset are present; graph inputs, initializers and node outputs have
// unique non-empty names (an initializer may also be listed as a graph
// input, as older exporters do); every node input is defined before the
// node that uses it (ONNX requires topological order); every node's domain
// is imported; and every graph output is defined.
//
// Check does not know operator schemas: it does not verify attribute
// names, input counts or types. Subgraphs (If, Loop, Scan) are not
// descended into.
func Check(m *ModelProto) error {
	var errs []error
	fail := func(format string, args ...any) {
		if len(errs) < maxCheckErrors {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	if m.GetIrVersion() <= 0 {
		fail("ir_version is missing")
	}
	imported := map[string]bool{}
	for _, o := range m.GetOpsetImport() {
		d := o.GetDomain()
		if d == "ai.onnx" {
			d = ""
		}
		imported[d] = true
	}
	if !imported[""] {
		fail("no opset_import for the default ONNX domain")
	}
	g := m.GetGraph()
	if g == nil {
		fail("no graph")
		return wrapCheck(errs)
	}
	defined := map[string]string{} // value name -> what defined it
	for _, in := range g.GetInput() {
		n := in.GetName()
		if n == "" {
			fail("graph input with empty name")
			continue
		}
		if _, dup := defined[n]; dup {
			fail("graph input %q defined twice", n)
		}
		defined[n] = "graph input"
	}
	for _, t := range g.GetInitializer() {
		n := t.GetName()
		if n == "" {
			fail("initializer with empty name")
			continue
		}
		if what, dup := defined[n]; dup && what != "graph input" {
			fail("initializer %q: name already defined by %s", n, what)
		}
		defined[n] = "initializer"
	}
	nodeNames := map[string]bool{}
	for i, nd := range g.GetNode() {
		label := nodeLabel(i, nd)
		if nm := nd.GetName(); nm != "" {
			if nodeNames[nm] {
				fail("%s: node name used twice", label)
			}
			nodeNames[nm] = true
		}
		if nd.GetOpType() == "" {
			fail("%s: empty op_type", label)
		}
		dom := nd.GetDomain()
		if dom == "ai.onnx" {
			dom = ""
		}
		if !imported[dom] {
			fail("%s: domain %q is not in opset_import", label, nd.GetDomain())
		}
		for _, in := range nd.GetInput() {
			if in == "" {
				continue // omitted optional input
			}
			if _, ok := defined[in]; !ok {
				if producerAfter(g, i, in) {
					fail("%s: input %q is produced by a later node (graph is not in topological order)", label, in)
				} else {
					fail("%s: input %q is not defined", label, in)
				}
			}
		}
		for _, out := range nd.GetOutput() {
			if out == "" {
				continue
			}
			if what, dup := defined[out]; dup {
				fail("%s: output %q already defined by %s", label, out, what)
			}
			defined[out] = label
		}
	}
	if len(g.GetOutput()) == 0 {
		fail("graph has no outputs")
	}
	for _, out := range g.GetOutput() {
		if _, ok := defined[out.GetName()]; !ok {
			fail("graph output %q is not defined", out.GetName())
		}
	}
	return wrapCheck(errs)
}

func wrapCheck(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidModel, errors.Join(errs...))
}

func producerAfter(g *GraphProto, i int, value string) bool {
	for _, nd := range g.GetNode()[i:] {
		if slices.Contains(nd.GetOutput(), value) {
			return true
		}
	}
	return false
}

func nodeLabel(i int, nd *NodeProto) string {
	if nd.GetName() != "" {
		return fmt.Sprintf("node %q (%s)", nd.GetName(), nd.GetOpType())
	}
	return fmt.Sprintf("node #%d (%s)", i, nd.GetOpType())
}

// FindInitializer returns the initializer called name, or nil.
func FindInitializer(g *GraphProto, name string) *TensorProto {
	for _, t := range g.GetInitializer() {
		if t.GetName() == name {
			return t
		}
	}
	return nil
}

// AddInitializer appends tp to the graph's initializers. It fails if a
// value of that name already exists.
func AddInitializer(g *GraphProto, tp *TensorProto) error {
	if tp.GetName() == "" {
		return errors.New("onnx: initializer has no name")
	}
	if Defined(g, tp.GetName()) {
		return fmt.Errorf("onnx: initializer %q: name already defined", tp.GetName())
	}
	g.Initializer = append(g.Initializer, tp)
	return nil
}

// RemoveInitializer deletes the initializer called name (and its entry in
// the graph inputs, if an older exporter listed it there). It reports
// whether it was found.
func RemoveInitializer(g *GraphProto, name string) bool {
	n := len(g.Initializer)
	g.Initializer = slices.DeleteFunc(g.Initializer, func(t *TensorProto) bool { return t.GetName() == name })
	if len(g.Initializer) == n {
		return false
	}
	g.Input = slices.DeleteFunc(g.Input, func(v *ValueInfoProto) bool { return v.GetName() == name })
	return true
}

// Defined reports whether a graph input, initializer or node output is
// called name.
func Defined(g *GraphProto, name string) bool {
	for _, v := range g.GetInput() {
		if v.GetName() == name {
			return true
		}
	}
	if FindInitializer(g, name) != nil {
		return true
	}
	return ProducerOf(g, name) >= 0
}

// UniqueName returns prefix if no value or node in g has that name, or else
// the first free prefix_1, prefix_2, ...
func UniqueName(g *GraphProto, prefix string) string {
	used := map[string]bool{}
	for _, v := range g.GetInput() {
		used[v.GetName()] = true
	}
	for _, t := range g.GetInitializer() {
		used[t.GetName()] = true
	}
	for _, nd := range g.GetNode() {
		used[nd.GetName()] = true
		for _, o := range nd.GetOutput() {
			used[o] = true
		}
	}
	if !used[prefix] {
		return prefix
	}
	for i := 1; ; i++ {
		if n := prefix + "_" + strconv.Itoa(i); !used[n] {
			return n
		}
	}
}

// FindNode returns the index of the node called name, or -1.
func FindNode(g *GraphProto, name string) int {
	return slices.IndexFunc(g.GetNode(), func(n *NodeProto) bool { return n.GetName() == name })
}

// ProducerOf returns the index of the node that outputs value, or -1 (for
// graph inputs, initializers and unknown names).
func ProducerOf(g *GraphProto, value string) int {
	return slices.IndexFunc(g.GetNode(), func(n *NodeProto) bool { return slices.Contains(n.GetOutput(), value) })
}

// ConsumersOf returns the indices of the nodes that take value as an input.
func ConsumersOf(g *GraphProto, value string) []int {
	var out []int
	for i, n := range g.GetNode() {
		if slices.Contains(n.GetInput(), value) {
			out = append(out, i)
		}
	}
	return out
}

// ReplaceNode replaces the node at index i with the given nodes (none
// removes it), keeping the position so the graph stays in order when the
// replacements consume what the old node consumed.
func ReplaceNode(g *GraphProto, i int, with ...*NodeProto) {
	g.Node = slices.Replace(g.Node, i, i+1, with...)
}

// RemoveNode deletes the node at index i.
func RemoveNode(g *GraphProto, i int) { ReplaceNode(g, i) }

// ReplaceUses rewires every node input (and graph output) named old to
// new, and returns how many references changed. A quantizer uses it to
// route consumers of a float value to its dequantized replacement.
func ReplaceUses(g *GraphProto, old, new string) int {
	n := 0
	for _, nd := range g.GetNode() {
		for j, in := range nd.Input {
			if in == old {
				nd.Input[j] = new
				n++
			}
		}
	}
	for _, o := range g.GetOutput() {
		if o.GetName() == old {
			o.Name = ptr(new)
			n++
		}
	}
	return n
}

// SortTopological reorders g's nodes so that every node comes after the
// producers of its inputs, keeping the existing order where it is already
// valid (a stable sort). Values that no node produces are taken to be
// graph inputs, initializers or outer-scope values. It fails, leaving g
// unchanged, if the nodes form a cycle.
func SortTopological(g *GraphProto) error {
	nodes := g.GetNode()
	producer := map[string]int{}
	for i, nd := range nodes {
		for _, o := range nd.GetOutput() {
			if o != "" {
				producer[o] = i
			}
		}
	}
	// deps[i]: nodes that must run before i; users[j]: nodes waiting on j.
	pending := make([]int, len(nodes))
	users := make([][]int, len(nodes))
	for i, nd := range nodes {
		seen := map[int]bool{}
		for _, in := range nd.GetInput() {
			if j, ok := producer[in]; ok && in != "" && !seen[j] {
				seen[j] = true
				pending[i]++
				users[j] = append(users[j], i)
			}
		}
	}
	// Kahn's algorithm, always taking the lowest ready index (stable).
	order := make([]*NodeProto, 0, len(nodes))
	var ready []int
	for i := range nodes {
		if pending[i] == 0 {
			ready = append(ready, i)
		}
	}
	for len(ready) > 0 {
		slices.Sort(ready)
		i := ready[0]
		ready = ready[1:]
		order = append(order, nodes[i])
		for _, u := range users[i] {
			if pending[u]--; pending[u] == 0 {
				ready = append(ready, u)
			}
		}
	}
	if len(order) != len(nodes) {
		for i := range nodes {
			if pending[i] > 0 {
				return fmt.Errorf("onnx: graph has a cycle through %s", nodeLabel(i, nodes[i]))
			}
		}
	}
	g.Node = order
	return nil
}
