package server

import (
	"net/http"

	"github.com/signalforge/signalforge/api"
)

// writePredictResponse writes r with status 200.
func (s *Server) writePredictResponse(w http.ResponseWriter, r *api.PredictResponse) {
	buf := s.pools.getBytes()
	buf = api.AppendPredictResponse(buf[:0], r)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(buf)
	s.pools.putBytes(buf)
}
