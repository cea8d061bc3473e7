package onnx

// ExternalTensor is a tensor whose data lives outside the model file
// (TensorProto.data_location = EXTERNAL).
type ExternalTensor struct {
	// Name is the tensor's name ("" for an unnamed attribute tensor).
	Name string
	// Location is the file the data is in, as the model writes it (a path
	// that ONNX Runtime resolves against the model file's folder, or the
	// working directory when the model is loaded from memory).
	Location string
}

// ExternalTensors lists every tensor of m that keeps its data in another
// file: graph initializers, sparse initializers, tensor attributes (of
// Constant nodes, for instance) and the same inside subgraphs (If, Loop,
// Scan bodies) and model-local functions. Such a model is not
// self-contained: what it loads depends on files beside it.
func ExternalTensors(m *ModelProto) []ExternalTensor {
	var out []ExternalTensor
	tensor := func(t *TensorProto) {
		if t.GetDataLocation() != TensorProto_EXTERNAL && len(t.GetExternalData()) == 0 {
			return
		}
		e := ExternalTensor{Name: t.GetName()}
		for _, kv := range t.GetExternalData() {
			if kv.GetKey() == "location" {
				e.Location = kv.GetValue()
			}
		}
		out = append(out, e)
	}
	sparse := func(s *SparseTensorProto) {
		tensor(s.GetValues())
		tensor(s.GetIndices())
	}
	var graph func(g *GraphProto)
	nodes := func(ns []*NodeProto) {
		for _, n := range ns {
			for _, a := range n.GetAttribute() {
				if a.GetT() != nil {
					tensor(a.GetT())
				}
				for _, t := range a.GetTensors() {
					tensor(t)
				}
				if a.GetSparseTensor() != nil {
					sparse(a.GetSparseTensor())
				}
				for _, s := range a.GetSparseTensors() {
					sparse(s)
				}
				if a.GetG() != nil {
					graph(a.GetG())
				}
				for _, sg := range a.GetGraphs() {
					graph(sg)
				}
			}
		}
	}
	graph = func(g *GraphProto) {
		for _, t := range g.GetInitializer() {
			tensor(t)
		}
		for _, s := range g.GetSparseInitializer() {
			sparse(s)
		}
		nodes(g.GetNode())
	}
	graph(m.GetGraph())
	for _, f := range m.GetFunctions() {
		nodes(f.GetNode())
	}
	return out
}
