package api

import "encoding/json"

// Open Inference Protocol v2 (KServe v2) REST types, as in the published
// specification ("Predict Protocol - Version 2").

// ServerMetadata is GET /v2.
type ServerMetadata struct {
	Name       string   `json:"name"`
	Version    string   `json:"version"`
	Extensions []string `json:"extensions"`
}

// ModelMetadata is GET /v2/models/{name}[/versions/{v}].
type ModelMetadata struct {
	Name     string           `json:"name"`
	Versions []string         `json:"versions,omitempty"`
	Platform string           `json:"platform"`
	Inputs   []TensorMetadata `json:"inputs"`
	Outputs  []TensorMetadata `json:"outputs"`
}

// TensorMetadata describes an input or output; -1 marks a dynamic dimension.
type TensorMetadata struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
}

// InferRequest is POST /v2/models/{name}[/versions/{v}]/infer.
type InferRequest struct {
	ID         string           `json:"id,omitempty"`
	Parameters map[string]any   `json:"parameters,omitempty"`
	Inputs     []InferTensor    `json:"inputs"`
	Outputs    []RequestedOuput `json:"outputs,omitempty"`
}

// RequestedOuput names an output the client wants.
type RequestedOuput struct {
	Name       string         `json:"name"`
	Parameters map[string]any `json:"parameters,omitempty"`
}

// InferTensor is one input or output tensor. Data is row-major, flat or
// nested (the specification allows both); the server flattens it.
type InferTensor struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters map[string]any  `json:"parameters,omitempty"`
	Data       json.RawMessage `json:"data"`
}

// InferResponse is the answer to an infer request.
type InferResponse struct {
	ModelName    string         `json:"model_name"`
	ModelVersion string         `json:"model_version,omitempty"`
	ID           string         `json:"id,omitempty"`
	Parameters   map[string]any `json:"parameters,omitempty"`
	Outputs      []InferTensor  `json:"outputs"`
}

// V2Error is the OIP v2 error body: {"error": "message"}.
type V2Error struct {
	Error string `json:"error"`
}
