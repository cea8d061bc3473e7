package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// repairHistory registers and changes two models through every kind of
// change (register, promote, set-traffic, set-split, rollback, archive,
// register as production) and returns the committed state.
func repairHistory(t *testing.T, dir string) (models []byte, seq uint64) {
	t.Helper()
	ctx := registry.WithActor(context.Background(), "alice")
	r := openReg(t, dir)
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.Register(ctx, registry.RegisterRequest{Name: "lstm_model", Version: "v1.0", ONNX: onnxModel(t, 1, feats...),
		Metrics: map[string]float64{"val_mae": 0.021}, Tags: map[string]string{"team": "quant"}, Description: "first",
		Lineage: registry.Lineage{SourceCheckpoint: "lstm.pt", Conversion: map[string]string{"opset": "17"}}}))
	must(r.Register(ctx, registry.RegisterRequest{Name: "lstm_model", ONNX: onnxModel(t, 2, feats...), Lineage: registry.Lineage{Parent: "v1.0"}}))
	must(r.Promote(ctx, ref("lstm_model:v1.0"), 100))
	must(r.Promote(ctx, ref("lstm_model:v2"), 5))
	must(r.SetTraffic(ctx, ref("lstm_model:v2"), 50))
	must(r.Register(ctx, registry.RegisterRequest{Name: "lstm_model", ONNX: onnxModel(t, 3, feats...)}))
	must(r.SetSplit(ctx, "lstm_model", registry.Split{"v1.0": 20, "v2": 30, "v3": 50}))
	must(r.Rollback(ctx, "lstm_model", 0))
	must(r.Archive(ctx, ref("lstm_model:v1.0"), true))
	must(r.Register(ctx, registry.RegisterRequest{Name: "gru", ONNX: onnxModel(t, 4, feats...), Status: registry.StatusProduction, Traffic: 100}))
	must(r.Register(ctx, registry.RegisterRequest{Name: "gru", ONNX: onnxModel(t, 5, feats...), Status: registry.StatusProduction, Traffic: 10}))
	r.Close()
	return stateModels(t, dir)
}

// stateModels returns the models and Seq of dir's state.json as stored.
func stateModels(t *testing.T, dir string) ([]byte, uint64) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Seq    uint64          `json:"seq"`
		Models json.RawMessage `json:"models"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	return st.Models, st.Seq
}

// TestRepairRebuildsDeletedState: with state.json deleted the registry
// refuses to open (instead of starting empty over its history), and Repair
// rebuilds exactly the state it had — models, versions, statuses, splits,
// records, times — from the audit log and the artifacts.
func TestRepairRebuildsDeletedState(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	want, seq := repairHistory(t, dir)
	if err := os.Remove(filepath.Join(dir, "state.json")); err != nil {
		t.Fatal(err)
	}
	_, err := registry.OpenFileStore(dir)
	if !errors.Is(err, registry.ErrStateMissing) || !strings.Contains(err.Error(), "signalforge models repair") {
		t.Fatalf("OpenFileStore without state.json = %v; want ErrStateMissing pointing to `signalforge models repair`", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err == nil {
		t.Fatal("opening the store wrote an empty state.json over the history")
	}

	dry, err := registry.Repair(ctx, dir, registry.RepairOptions{DryRun: true})
	if err != nil || dry.Wrote || dry.OldState != "missing" {
		t.Fatalf("dry run = %+v, %v", dry, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err == nil {
		t.Fatal("a dry run wrote state.json")
	}
	rep, err := registry.Repair(ctx, dir, registry.RepairOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Wrote || len(rep.Problems) != 0 || rep.KeptAs != "" || len(rep.Models) != 2 || rep.Versions() != 5 || rep.Seq != seq {
		t.Fatalf("Repair = %+v", rep)
	}
	got, gotSeq := stateModels(t, dir)
	if gotSeq != seq || !bytes.Equal(got, want) {
		t.Fatalf("rebuilt state (seq %d):\n%s\nwant (seq %d):\n%s", gotSeq, got, seq, want)
	}
	checkConsistent(t, dir)

	// The registry goes on where it stopped.
	r := openReg(t, dir)
	if _, err := r.SetTraffic(ctx, ref("gru:v2"), 50); err != nil {
		t.Fatal(err)
	}
	if h, _ := r.History(ctx, "gru"); h[len(h)-1].Seq != seq+1 {
		t.Fatalf("the next event has seq %d; want %d", h[len(h)-1].Seq, seq+1)
	}
	checkConsistent(t, dir)
}

// editState rewrites dir's state.json through edit, as a hand edit would.
func editState(t *testing.T, dir string, edit func(models map[string]registry.Model)) {
	t.Helper()
	path := filepath.Join(dir, "state.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]json.RawMessage
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	var models map[string]registry.Model
	if err := json.Unmarshal(st["models"], &models); err != nil {
		t.Fatal(err)
	}
	edit(models)
	if st["models"], err = json.Marshal(models); err != nil {
		t.Fatal(err)
	}
	if data, err = json.Marshal(st); err != nil {
		t.Fatal(err)
	}
	// Written aside and renamed, as editors save, so a follower polling
	// the file never reads half of it.
	if err := os.WriteFile(path+".edit", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".edit", path); err != nil {
		t.Fatal(err)
	}
}

// TestLoadRefusesInvalidState: a state.json edited into breaking the rules
// (500% of traffic, traffic on a staging version, an unknown status, a
// malformed artifact sha256, a split totalling 60%) is refused on load
// with an error naming the model, version and field and pointing to
// `signalforge models repair`; a handle opened before the edit refuses
// to read or write it too, and Repair puts the state back.
func TestLoadRefusesInvalidState(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		edit func(m map[string]registry.Model)
		want []string
	}{
		{"traffic 500%", func(m map[string]registry.Model) { m["gru"].Versions[0].Traffic = 500 }, []string{`model "gru" version "v1"`, "traffic", "500%"}},
		{"traffic on staging", func(m map[string]registry.Model) { m["lstm_model"].Versions[2].Traffic = 10 }, []string{`version "v3"`, "traffic", "staging"}},
		{"unknown status", func(m map[string]registry.Model) { m["gru"].Versions[1].Status = "canary" }, []string{`version "v2"`, "status", `"canary"`}},
		{"malformed sha256", func(m map[string]registry.Model) { m["gru"].Versions[1].Artifact.SHA256 = "../x" }, []string{`version "v2"`, "artifact.sha256"}},
		{"split totals 60%", func(m map[string]registry.Model) { m["gru"].Versions[0].Traffic = 50 }, []string{`model "gru"`, "totals 60%"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			want, seq := repairHistory(t, dir)
			early, err := registry.OpenFileStore(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer early.Close()
			editState(t, dir, c.edit)

			_, err = registry.OpenFileStore(dir)
			if !errors.Is(err, registry.ErrInvalidState) {
				t.Fatalf("OpenFileStore over a state with %s = %v; want ErrInvalidState", c.name, err)
			}
			for _, w := range append(c.want, "state.json", "signalforge models repair") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if _, err := early.Models(ctx); !errors.Is(err, registry.ErrInvalidState) {
				t.Fatalf("an open store's Models over the edited state = %v; want ErrInvalidState", err)
			}
			before, _ := os.ReadFile(filepath.Join(dir, "state.json"))
			err = early.Update(ctx, "gru", func(m *registry.Model) ([]registry.Event, error) {
				return []registry.Event{{Name: "gru", Action: registry.ActionPromote}}, nil
			})
			if !errors.Is(err, registry.ErrInvalidState) {
				t.Fatalf("Update over the edited state = %v; want ErrInvalidState", err)
			}
			if after, _ := os.ReadFile(filepath.Join(dir, "state.json")); !bytes.Equal(before, after) {
				t.Fatal("a refused Update rewrote state.json")
			}

			rep, err := registry.Repair(ctx, dir, registry.RepairOptions{})
			if err != nil || !rep.Wrote || len(rep.Problems) != 0 || !strings.HasPrefix(rep.OldState, "invalid: ") {
				t.Fatalf("Repair = %+v, %v", rep, err)
			}
			kept, err := os.ReadFile(rep.KeptAs)
			if err != nil || !bytes.Equal(kept, before) || !strings.HasPrefix(filepath.Base(rep.KeptAs), "state.json.broken-") {
				t.Fatalf("the edited state was not kept aside as state.json.broken-<time> (%s: %v)", rep.KeptAs, err)
			}
			got, gotSeq := stateModels(t, dir)
			if gotSeq != seq || !bytes.Equal(got, want) {
				t.Fatalf("repaired state differs from the one before the edit:\n%s\nwant\n%s", got, want)
			}
			if _, err := early.Models(ctx); err != nil {
				t.Fatalf("the open store after Repair: %v", err)
			}
		})
	}
}

// TestRepairFlagsTamperedArtifact: Rebuild hashes every artifact; a version
// whose stored file no longer matches its sha256 (or is gone) is left out
// and reported, and its share of traffic is rescaled onto the versions
// that remain — reported too.
func TestRepairFlagsTamperedArtifact(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	repairHistory(t, dir)
	s, err := registry.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	gru, _ := s.Model(ctx, "gru")
	lstm, _ := s.Model(ctx, "lstm_model")
	tampered, _ := s.ArtifactPath(ctx, gru.Versions[1].Artifact.SHA256) // gru:v2, 10%
	missing, _ := s.ArtifactPath(ctx, lstm.Versions[0].Artifact.SHA256) // lstm_model:v1.0, archived
	s.Close()
	if err := os.WriteFile(tampered, onnxModel(t, 99, feats...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(missing); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "state.json"))

	rep, err := registry.Repair(ctx, dir, registry.RepairOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	for _, p := range rep.Problems {
		problems = append(problems, p.String())
	}
	all := strings.Join(problems, "\n")
	for _, want := range []string{
		"(register gru:v2): registry: invalid artifact: the stored file of artifact " + gru.Versions[1].Artifact.SHA256 + " hashes to ",
		"(register lstm_model:v1.0): registry: not found: artifact " + lstm.Versions[0].Artifact.SHA256 + " is missing; left out",
		"model gru: versions left out served 10%; the remaining split v1=90% was rescaled to v1=100%",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("problems lack %q:\n%s", want, all)
		}
	}
	if rep.Versions() != 3 || !rep.Wrote {
		t.Fatalf("Repair = %+v", rep)
	}
	r := openReg(t, dir)
	if _, err := r.Get(ctx, ref("gru:v2")); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("gru:v2, whose artifact was tampered with, was rebuilt: %v", err)
	}
	if s, _ := r.Split(ctx, "gru"); !s.Equal(registry.Split{"v1": 100}) {
		t.Fatalf("gru split after repair = %s", s)
	}
}

// TestRepairReportsEventsWithoutRecords: a log written before register
// events carried the version record cannot rebuild those versions by
// itself. With the old state.json still parseable (hand-edited to 500%)
// Repair takes them from it and says so; with state.json gone it leaves
// them out and says which event and which version.
func TestRepairReportsEventsWithoutRecords(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	want, seq := repairHistory(t, dir)
	path := filepath.Join(dir, "audit.log")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for line := range bytes.Lines(data) {
		var e map[string]json.RawMessage
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatal(err)
		}
		if string(e["version"]) == `"v1.0"` {
			delete(e, "record") // as an older build wrote it
		}
		b, _ := json.Marshal(e)
		out.Write(append(b, '\n'))
	}
	os.WriteFile(path, out.Bytes(), 0o644)
	// (The log is now shorter than the size state.json commits, which
	// Repair then ignores.)
	editState(t, dir, func(m map[string]registry.Model) { m["gru"].Versions[0].Traffic = 500 })

	rep, err := registry.Repair(ctx, dir, registry.RepairOptions{})
	if err != nil || len(rep.Problems) != 0 || len(rep.Notes) != 1 || !rep.Wrote ||
		rep.Notes[0].String() != "event 1 (register lstm_model:v1.0): predates artifact records; the version was taken from the old state.json (artifact verified), its status and traffic from the log" {
		t.Fatalf("Repair over an old log and an invalid state = %+v, %v", rep, err)
	}
	if got, gotSeq := stateModels(t, dir); gotSeq != seq || !bytes.Equal(got, want) {
		t.Fatalf("rebuilt state:\n%s\nwant\n%s", got, want)
	}

	os.Remove(filepath.Join(dir, "state.json"))
	rep, err = registry.Repair(ctx, dir, registry.RepairOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 1 || rep.Problems[0].String() != "event 1 (register lstm_model:v1.0): predates artifact records; cannot rebuild this version" {
		t.Fatalf("problems = %v", rep.Problems)
	}
	r := openReg(t, dir)
	vs, err := r.Versions(ctx, "lstm_model")
	if err != nil || len(vs) != 2 {
		t.Fatalf("lstm_model after repair: %+v, %v; want v2 and v3", vs, err)
	}
	// Old events still load, without a record.
	h, err := r.History(ctx, "lstm_model")
	if err != nil || h[0].Record != nil || h[1].Record == nil {
		t.Fatalf("the rewritten log does not load: %v", err)
	}
}

// TestRepairReportsVersionsMissingFromLog: versions the old state holds
// but the audit log never registered (a log cut short) are listed as lost,
// not dropped silently.
func TestRepairReportsVersionsMissingFromLog(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	repairHistory(t, dir)
	path := filepath.Join(dir, "audit.log")
	data, _ := os.ReadFile(path)
	first := bytes.IndexByte(data, '\n') + 1
	os.WriteFile(path, data[:first], 0o644) // only lstm_model:v1.0's registration
	editState(t, dir, func(m map[string]registry.Model) { m["gru"].Versions[0].Traffic = 500 })
	rep, err := registry.Repair(ctx, dir, registry.RepairOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range rep.Problems {
		got = append(got, p.String())
	}
	want := []string{
		"model gru: version v1 is in the old state.json but no event of the audit log registers it; left out",
		"model gru: version v2 is in the old state.json but no event of the audit log registers it; left out",
		"model lstm_model: version v2 is in the old state.json but no event of the audit log registers it; left out",
		"model lstm_model: version v3 is in the old state.json but no event of the audit log registers it; left out",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") || rep.Versions() != 1 {
		t.Fatalf("problems:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestRepairLeavesValidStateAlone: on a healthy registry Repair writes
// nothing, even with an uncommitted tail in the audit log; a valid state
// that differs from the log is replaced only with Force.
func TestRepairLeavesValidStateAlone(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	repairHistory(t, dir)
	f, _ := os.OpenFile(filepath.Join(dir, "audit.log"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":99,"action":"promote","name":"gru","version":"v2"}` + "\n" + `{"seq":100,"act`)
	f.Close()
	before := snapshot(t, dir)
	rep, err := registry.Repair(ctx, dir, registry.RepairOptions{})
	if err != nil || !rep.Unchanged || rep.Wrote || rep.Tail == 0 {
		t.Fatalf("Repair of a healthy registry = %+v, %v", rep, err)
	}
	if snapshot(t, dir) != before {
		t.Fatal("Repair of a healthy registry changed it")
	}

	// A valid hand edit: v1 and v2 swap shares.
	editState(t, dir, func(m map[string]registry.Model) {
		m["gru"].Versions[0].Traffic, m["gru"].Versions[1].Traffic = 10, 90
	})
	rep, err = registry.Repair(ctx, dir, registry.RepairOptions{})
	if err != nil || !rep.Differs || rep.Wrote {
		t.Fatalf("Repair of a valid state that differs from the log = %+v, %v; want it left alone", rep, err)
	}
	rep, err = registry.Repair(ctx, dir, registry.RepairOptions{Force: true})
	if err != nil || !rep.Wrote {
		t.Fatalf("Repair --force = %+v, %v", rep, err)
	}
	r := openReg(t, dir)
	if s, _ := r.Split(ctx, "gru"); !s.Equal(registry.Split{"v1": 90, "v2": 10}) {
		t.Fatalf("gru after a forced repair = %s; want the log's 90/10", s)
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestWatchSurvivesInvalidState: a follower (a server's Watch) reading a
// state edited into breaking the rules keeps its channel open, logs the
// failure once rather than on every poll, and delivers changes again once
// the state is repaired.
func TestWatchSurvivesInvalidState(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	_, seq := repairHistory(t, dir)
	var logs syncBuffer
	follower, err := registry.Open(ctx, registry.Config{Dir: dir, PollInterval: time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer follower.Close()
	events := follower.Watch(ctx, seq)

	editState(t, dir, func(m map[string]registry.Model) { m["gru"].Versions[0].Traffic = 500 })
	if _, err := follower.Models(ctx); !errors.Is(err, registry.ErrInvalidState) {
		t.Fatalf("Models over a 500%% state = %v", err)
	}
	// Let the watch poll the broken state many times.
	for !strings.Contains(logs.String(), "reading changes failed") {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := strings.Count(logs.String(), "reading changes failed"); n != 1 {
		t.Fatalf("the watch logged the same failure %d times:\n%s", n, logs.String())
	}
	if st := follower.Stats(); st.Up || !strings.Contains(st.LastError, "500") {
		t.Fatalf("Stats while the state is broken = %+v; want down, with the error", st)
	}
	if _, err := registry.Repair(ctx, dir, registry.RepairOptions{}); err != nil {
		t.Fatal(err)
	}
	writer := openReg(t, dir)
	if _, err := writer.SetTraffic(ctx, ref("gru:v2"), 50); err != nil {
		t.Fatal(err)
	}
	ev, ok := <-events
	if !ok || ev.Seq != seq+1 || ev.Action != registry.ActionSetTraffic {
		t.Fatalf("after repair the watch delivered %+v (open: %v); want the set-traffic event %d", ev, ok, seq+1)
	}
	if s, err := follower.Split(ctx, "gru"); err != nil || !s.Equal(registry.Split{"v1": 50, "v2": 50}) {
		t.Fatalf("follower's split after repair = %s, %v", s, err)
	}
	if !strings.Contains(logs.String(), "works again") {
		t.Fatalf("the recovery was not logged:\n%s", logs.String())
	}
	if st := follower.Stats(); !st.Up || st.LastError != "" || st.Seq != seq+1 {
		t.Fatalf("Stats after the repair = %+v; want up at Seq %d", st, seq+1)
	}
}

// FuzzRepair: whatever audit.log holds, Repair (dry run) returns an error
// or a rebuilt state that keeps the registry's rules; it never panics.
// The seed is a real log whose artifacts are present.
func FuzzRepair(f *testing.F) {
	ctx := context.Background()
	seedDir := f.TempDir()
	r, err := registry.Open(ctx, registry.Config{Dir: seedDir})
	if err != nil {
		f.Fatal(err)
	}
	for i, st := range []registry.Status{registry.StatusProduction, registry.StatusStaging} {
		if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(f, uint64(i+1), feats...), Status: st, Traffic: float64(100 * (1 - i))}); err != nil {
			f.Fatal(err)
		}
	}
	if _, err := r.Promote(ctx, ref("m:v2"), 30); err != nil {
		f.Fatal(err)
	}
	if _, err := r.Archive(ctx, ref("m:v1"), true); err != nil {
		f.Fatal(err)
	}
	r.Close()
	log, err := os.ReadFile(filepath.Join(seedDir, "audit.log"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(log)
	f.Add(log[:len(log)/2])
	f.Add(bytes.ReplaceAll(log, []byte(`"traffic":30`), []byte(`"traffic":1e308`)))
	f.Add([]byte(`{"seq":1,"action":"register","name":"m","version":"v1","record":{"name":"m","version":"v1","artifact":{"sha256":"00","size":-1}},"changes":[{"version":"v1","after":{"status":"production","traffic":-4}}]}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.Symlink(filepath.Join(seedDir, "artifacts"), filepath.Join(dir, "artifacts")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "audit.log"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		rep, err := registry.Repair(ctx, dir, registry.RepairOptions{DryRun: true})
		if err != nil {
			return
		}
		if rep.Wrote {
			t.Fatal("a dry run wrote state.json")
		}
		for _, m := range rep.Models {
			if err := registry.ValidateModel(m); err != nil {
				t.Fatalf("Repair rebuilt a model that breaks the rules: %v", err)
			}
		}
	})
}
