package fleet

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a Store in Redis. Each replica's snapshot of a model is one
// key, prefix:fleet:{model}:replica, written with the publish TTL, so a
// replica that stops publishing ages out in Redis itself; a sorted set
// prefix:fleet:{model} indexes the replicas (score: the last publish, in
// Unix milliseconds) so that reading needs no SCAN. Both keys of a model
// share the hash tag {model}: on a Redis Cluster they live on one node.
//
// Publish is one round trip for all models; Snapshots is two.
type Redis struct {
	rdb    redis.UniversalClient
	prefix string

	invalid atomic.Int64
}

// indexKeep is how long a replica that stopped publishing stays in a
// model's index (its snapshot key expires much sooner); it bounds the
// index to the replicas of the last hour.
const indexKeep = time.Hour

// NewRedis returns a Store over rdb whose keys start with prefix (if
// empty, "signalforge"). Closing rdb is the caller's job.
func NewRedis(rdb redis.UniversalClient, prefix string) *Redis {
	if prefix == "" {
		prefix = "signalforge"
	}
	return &Redis{rdb: rdb, prefix: prefix}
}

func (r *Redis) indexKey(model string) string { return r.prefix + ":fleet:{" + model + "}" }
func (r *Redis) snapKey(model, replica string) string {
	return r.prefix + ":fleet:{" + model + "}:" + replica
}

// Publish implements Store.
func (r *Redis) Publish(ctx context.Context, ttl time.Duration, snaps ...Snapshot) error {
	if err := validTTL(ttl); err != nil {
		return err
	}
	vals := make([][]byte, len(snaps))
	for i := range snaps {
		if err := snaps[i].validate(); err != nil {
			return err
		}
		b, err := encode(snaps[i])
		if err != nil {
			return fmt.Errorf("fleet: encoding %s from replica %s: %w", snaps[i].Model, snaps[i].Replica, err)
		}
		vals[i] = b
	}
	if len(snaps) == 0 {
		return nil
	}
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, s := range snaps {
			idx := r.indexKey(s.Model)
			p.Set(ctx, r.snapKey(s.Model, s.Replica), vals[i], ttl)
			p.ZAdd(ctx, idx, redis.Z{Score: float64(s.At.UnixMilli()), Member: s.Replica})
			p.PExpire(ctx, idx, indexKeep)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("fleet: publishing to redis: %w", err)
	}
	return nil
}

// Snapshots implements Store. A stored value that does not parse is
// skipped (and counted, see Invalid): one bad writer must not blind the
// judge to the rest of the fleet.
func (r *Redis) Snapshots(ctx context.Context, model string) ([]Snapshot, error) {
	if !validName(model) {
		return nil, fmt.Errorf("%w: model name %q", ErrInvalid, model)
	}
	idx := r.indexKey(model)
	cutoff := time.Now().Add(-indexKeep).UnixMilli()
	var members *redis.StringSliceCmd
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRemRangeByScore(ctx, idx, "-inf", "("+strconv.FormatInt(cutoff, 10))
		members = p.ZRange(ctx, idx, 0, -1)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: reading the replicas of %s from redis: %w", model, err)
	}
	replicas := members.Val()
	if len(replicas) == 0 {
		return nil, nil
	}
	keys := make([]string, len(replicas))
	for i, id := range replicas {
		keys[i] = r.snapKey(model, id)
	}
	vals, err := r.rdb.MGet(ctx, keys...).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("fleet: reading the snapshots of %s from redis: %w", model, err)
	}
	var out []Snapshot
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // expired: the replica aged out
		}
		s, err := decode([]byte(str))
		if err != nil || s.Model != model {
			r.invalid.Add(1)
			continue
		}
		out = append(out, s)
	}
	return out, nil
}

// Invalid returns how many stored snapshots Snapshots skipped because
// they did not parse or validate.
func (r *Redis) Invalid() int64 { return r.invalid.Load() }

func validTTL(ttl time.Duration) error {
	if ttl < time.Millisecond {
		return fmt.Errorf("fleet: publish TTL %v below 1ms", ttl)
	}
	return nil
}
