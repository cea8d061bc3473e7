package fleet_test

import (
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/signalforge/signalforge/internal/testredis"
	"github.com/signalforge/signalforge/route/fleet"
	"github.com/signalforge/signalforge/route/fleet/fleettest"
)

func TestMemoryConformance(t *testing.T) {
	fleettest.Run(t, func(t *testing.T) fleet.Store { return fleet.NewMemory() })
}

func TestRedisConformance(t *testing.T) {
	srv := testredis.Start(t)
	fleettest.Run(t, func(t *testing.T) fleet.Store {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
		t.Cleanup(func() { rdb.Close() })
		return fleet.NewRedis(rdb, t.Name()) // a key space per subtest
	})
}

func TestDirConformance(t *testing.T) {
	fleettest.Run(t, func(t *testing.T) fleet.Store {
		d, err := fleet.NewDir(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}
