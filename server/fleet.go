package server

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/signalforge/signalforge/canary"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/route/fleet"
)

// The fleet: every replica publishes its per-version counters to
// Config.Fleet, and the one replica that holds the autopilot lease (on
// Config.Leaser) judges canaries on the fleet's sum and writes its actions
// to the registry, which every replica follows.
//
//	GET /v1/admin/models/{name}/fleet   the fleet's per-replica, per-version counters

// autopilotLease is the lease the replicas' autopilots contend on.
const autopilotLease = "autopilot"

// defaultReplica is this process's id when Config.Replica is empty: the
// host name and the process id.
func defaultReplica() string {
	host, err := os.Hostname()
	if err != nil || !validReplica(host) {
		host = "replica"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}

// validReplica accepts what a fleet Store and a lease holder accept:
// letters, digits and '.', '_', '-' (not first), at most 128 bytes.
func validReplica(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// fleetParts are the fleet components that run while the server serves:
// started by Serve, closed in order when it shuts down.
type fleetParts struct {
	publisher *fleet.Publisher
	elector   *registry.Elector // nil without a Leaser
	pilot     *canary.Pilot
}

// startFleet starts publishing this replica's counters and, with a
// Leaser, contending for the autopilot lease.
func (s *Server) startFleet() (*fleetParts, error) {
	pub, err := fleet.NewPublisher(s.cfg.Fleet, fleet.FromRouter(s.router),
		fleet.PublisherConfig{Replica: s.cfg.Replica, Interval: s.cfg.FleetInterval})
	if err != nil {
		return nil, err
	}
	fp := &fleetParts{publisher: pub}
	if s.cfg.Leaser != nil {
		el, err := registry.NewElector(registry.ElectorConfig{Leaser: s.cfg.Leaser, Name: autopilotLease,
			Holder: s.cfg.Replica, TTL: s.cfg.LeaseTTL, Logger: s.log})
		if err != nil {
			pub.Close()
			return nil, err
		}
		fp.elector = el
	}
	pcfg := canary.Config{Registry: s.reg, Evidence: s.collector, Tick: s.cfg.AutopilotTick, Logger: s.log}
	if fp.elector != nil {
		pcfg.Leader = fp.elector // else this process always leads
	}
	pilot, err := canary.New(pcfg)
	if err != nil {
		fp.stopLeading()
		pub.Close()
		return nil, err
	}
	fp.pilot = pilot
	s.fleet.Store(fp)
	return fp, nil
}

// stopLeading stops the autopilot and then releases the lease, so that a
// peer takes over at once: the first thing a shutdown does.
func (fp *fleetParts) stopLeading() {
	if fp.pilot != nil {
		fp.pilot.Close()
	}
	if fp.elector != nil {
		fp.elector.Close()
	}
}

// autopilotView says who runs the fleet's autopilot.
type autopilotView struct {
	// Leader is the replica holding the lease ("" if nobody does now).
	Leader      string `json:"leader"`
	ThisReplica string `json:"this_replica"`
	// Leads reports whether this replica runs the autopilot now.
	Leads bool `json:"leads"`
	// Elected is false when the server has no Leaser: every server then
	// runs its own autopilot (one process is the fleet).
	Elected bool   `json:"elected"`
	Epoch   uint64 `json:"epoch,omitempty"`
	Error   string `json:"error,omitempty"`
}

func (s *Server) autopilotStatus(ctx context.Context) autopilotView {
	v := autopilotView{ThisReplica: s.cfg.Replica}
	if s.cfg.Leaser == nil {
		v.Leader, v.Leads = s.cfg.Replica, true
		return v
	}
	v.Elected = true
	if fp := s.fleet.Load(); fp != nil && fp.elector != nil {
		v.Leads = fp.elector.IsLeader()
	}
	l, err := s.cfg.Leaser.ReadLease(ctx, autopilotLease)
	if err != nil {
		v.Error = err.Error()
		if v.Leads {
			v.Leader = s.cfg.Replica
		}
		return v
	}
	v.Epoch = l.Epoch
	if l.Left > 0 {
		v.Leader = l.Holder
	}
	return v
}

// countersView is a version's counters as the admin API shows them.
type countersView struct {
	Requests     int64   `json:"requests"`
	Errors       int64   `json:"errors"`
	NonFinite    int64   `json:"non_finite"`
	ErrorRatePct float64 `json:"error_rate_pct"`
	AvgMS        float64 `json:"avg_ms"`
	P50MS        float64 `json:"p50_ms"`
	P99MS        float64 `json:"p99_ms"`
}

func viewCounters(c route.Counters) countersView {
	m := c.Metrics()
	return countersView{Requests: c.Requests, Errors: c.Errors, NonFinite: c.NonFinite, ErrorRatePct: m.ErrorRatePct,
		AvgMS: ms(m.AvgLatency), P50MS: ms(m.P50), P99MS: ms(m.P99)}
}

func viewCounterMap(vs map[string]route.Counters) map[string]countersView {
	out := make(map[string]countersView, len(vs))
	for v, c := range vs {
		out[v] = viewCounters(c)
	}
	return out
}

type replicaView struct {
	Replica  string                  `json:"replica"`
	Started  time.Time               `json:"started"`
	At       time.Time               `json:"at"`
	AgeMS    float64                 `json:"age_ms"`
	Versions map[string]countersView `json:"versions"`
}

// fleetView is the answer of GET …/fleet.
type fleetView struct {
	Model       string                  `json:"model"`
	At          time.Time               `json:"at"`
	ThisReplica string                  `json:"this_replica"`
	Versions    map[string]countersView `json:"versions"`
	Replicas    []replicaView           `json:"replicas"`
	Stale       []string                `json:"stale"`
}

func viewFleet(f fleet.Fleet, self string) fleetView {
	v := fleetView{Model: f.Model, At: f.At, ThisReplica: self, Versions: viewCounterMap(f.Versions),
		Replicas: []replicaView{}, Stale: f.Stale}
	if v.Stale == nil {
		v.Stale = []string{}
	}
	for _, r := range f.Replicas {
		v.Replicas = append(v.Replicas, replicaView{Replica: r.Replica, Started: r.Started, At: r.At,
			AgeMS: ms(f.At.Sub(r.At)), Versions: viewCounterMap(r.Versions)})
	}
	return v
}

func (s *Server) handleFleet(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := registry.ValidateName(name); err != nil {
		return err
	}
	if _, err := s.reg.Versions(r.Context(), name); err != nil {
		return err
	}
	f, err := s.collector.Collect(r.Context(), name)
	if err != nil {
		return fmt.Errorf("reading the fleet's counters: %w", err)
	}
	writeJSON(w, http.StatusOK, viewFleet(f, s.cfg.Replica))
	return nil
}
