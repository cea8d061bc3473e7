package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Client calls a SignalForge Serve server. The zero value is not usable;
// set BaseURL.
type Client struct {
	// BaseURL is the server's address, e.g. "http://127.0.0.1:8080".
	BaseURL string
	// HTTP is the client to use. If nil, http.DefaultClient.
	HTTP *http.Client
	// Token is sent as a bearer token when set (admin endpoints).
	Token string
}

// Error is an error answer from the server.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("server answered %d %s: %s", e.Status, e.Code, e.Message)
}

// Predict calls POST /v1/models/{model}/predict.
func (c *Client) Predict(ctx context.Context, model string, req *PredictRequest) (*PredictResponse, error) {
	var resp PredictResponse
	if err := c.Do(ctx, http.MethodPost, "/v1/models/"+url.PathEscape(model)+"/predict", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Infer calls the OIP v2 infer endpoint; version may be empty.
func (c *Client) Infer(ctx context.Context, model, version string, req *InferRequest) (*InferResponse, error) {
	p := "/v2/models/" + url.PathEscape(model)
	if version != "" {
		p += "/versions/" + url.PathEscape(version)
	}
	var resp InferResponse
	if err := c.Do(ctx, http.MethodPost, p+"/infer", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Models calls GET /v1/models.
func (c *Client) Models(ctx context.Context) ([]ModelSummary, error) {
	var resp struct {
		Models []ModelSummary `json:"models"`
	}
	if err := c.Do(ctx, http.MethodGet, "/v1/models", nil, &resp); err != nil {
		return nil, err
	}
	return resp.Models, nil
}

// Do sends body (JSON, if not nil) to path and decodes the answer into out
// (if not nil). A non-2xx answer is returned as *Error.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		var eb ErrorBody
		var v2 V2Error
		if json.Unmarshal(data, &eb) == nil && eb.Error.Message != "" {
			e.Code, e.Message = eb.Error.Code, eb.Error.Message
		} else if json.Unmarshal(data, &v2) == nil && v2.Error != "" {
			e.Message = v2.Error
		} else {
			e.Message = strings.TrimSpace(string(data))
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding answer from %s: %w", path, err)
	}
	return nil
}
