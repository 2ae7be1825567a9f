/**
 * The Lua scripts, in one place. With no waiter of this library queued,
 * RELEASE, EXTEND and RESET do to the keys what python-redis-lock 4.x does
 * (its UNLOCK, EXTEND and RESET scripts, in milliseconds), so that Python
 * and TypeScript holders share a lock.
 *
 * Waiters of this library queue in `lock-queue:<name>`; when the lock is let
 * go (release, reset, a waiter that gives up after being handed the lock,
 * or a waiter finding it free), it goes straight to the first queued waiter
 * whose process is alive (`lock-alive:<process>` exists): the script sets
 * the lock to that waiter's id, draws its fencing token and pushes
 * `<ticket>:<token>` to the wake list of its process. Entries of dead
 * processes are dropped on the way. The hand-over sets an expiry of at most
 * `HAND_OVER_EXPIRE`, which the new holder lengthens to its own once it is
 * running, so that a process that dies just before it is handed the lock
 * holds it briefly. When nobody alive is queued, the lock is deleted and
 * python-redis-lock's wake-up is left in the signal list: every way of
 * letting go, and every look that finds the lock free with nobody to give it
 * to, leaves one.
 *
 * A queue entry is `<process>|<ticket>|<expire ms or empty>|<id>`.
 *
 * Every script is safe to run again after a lost reply: queueing an entry
 * twice leaves one, cancelling removes every copy.
 *
 * Shared steps are spliced into each script as statements, not defined as
 * Lua functions: defining a function costs the server time at every run.
 *
 * @module
 */

import type { Reply } from "./clients.ts";
import {
  ALIVE_PREFIX,
  ALIVE_TTL,
  HAND_OVER_EXPIRE,
  type LockKeys,
  PUBSUB_MARK,
  QUEUE_TTL,
  TURN,
  TURN_LEASE,
  TURN_MEMORY,
  TURN_QUIET,
  WAKE_PREFIX,
} from "./keys.ts";

/**
 * Lets scripts read the clock before writing (Redis 3.2 to 4; later
 * versions replicate effects anyway).
 */
const EFFECTS =
  `if redis.replicate_commands then redis.replicate_commands() end`;

/**
 * Statements that draw a fencing token from the counter at `KEYS[fence]`:
 * the server's clock in µs, or one more than the last token if that is
 * higher. They leave `token`, `epoch` (the counter's epoch, made now if the
 * counter was missing) and `now` (µs) in locals.
 */
function draw(fence: number): string {
  return `
local now = redis.call('time')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local fence = redis.call('get', KEYS[${fence}])
local epoch, last
if fence then epoch, last = string.match(fence, '^(%d+):(%d+)$') end
if epoch then last = tonumber(last) else epoch, last = string.format('%d', now), 0 end
local token = now
if token <= last then token = last + 1 end
redis.call('set', KEYS[${fence}], epoch .. ':' .. string.format('%d', token))
`;
}

/**
 * Statements that draw a fencing token in one write when the counter at
 * `KEYS[fence]` (KEYS[4] unless said) is of the epoch `known` (a Lua
 * expression: the caller's, "" if none) and behind the server's clock, on
 * Redis 7: they leave the token in `fastToken`, or false with the counter
 * unchanged (another epoch, ahead of the clock, or an older Redis: then
 * `draw` does it).
 */
function fastDraw(known: string, fence = 4): string {
  return `
local fastToken = false
if ${known} ~= '' and redis.REDIS_VERSION_NUM then
  local clock = redis.call('time')
  local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  local old = redis.call('set', KEYS[${fence}], ${known} .. ':' .. string.format('%d', now), 'GET')
  local epoch, last = string.match(old or '', '^(%d+):(%d+)$')
  if epoch == ${known} and tonumber(last) < now then
    fastToken = now
  elseif old then
    redis.call('set', KEYS[${fence}], old)
  else
    redis.call('del', KEYS[${fence}])
  end
end
`;
}

/**
 * Statements that set the lock for the queue entry parsed into `px` and
 * `id`, for at most `HAND_OVER_EXPIRE` (KEYS: lock).
 */
const SET_HANDED = `
local ttl = ${HAND_OVER_EXPIRE}
if px ~= '' and tonumber(px) < ttl then ttl = tonumber(px) end
redis.call('set', KEYS[1], id, 'PX', ttl)
`;

/**
 * Statements that set the lock for the queue entry parsed into `process`,
 * `px` and `id`, and draw its token (KEYS: lock, signal, queue, fence).
 */
const SET_FOR_ENTRY = `
${SET_HANDED}
${draw(4)}
`;

/**
 * Statements that hand the lock to the first queued entry of a live
 * process, dropping the entries of dead ones: they leave `entry` false when
 * there is none. On a Cluster (KEYS[6]: the lock's liveness hash), a
 * process is a wait, alive while its field holds a time to come, and hears
 * of the hand-over on the lock's sharded channel (its process as message).
 *
 * `self` (a Lua expression) is the process that lets the lock go, if it
 * waits too: a hand-over to one of its own waiters (`here`) pushes nothing,
 * as the reply carries it, and sets the waiter's own expiry, as the process
 * is running. `inRelease` (RELEASE's): the local `direct` true says the
 * entry ARGV[7] comes first, as if queued alone (see `QUEUE_NEXT`), and the
 * token is drawn in one write when the counter is of the epoch ARGV[5] (the
 * caller's, "" if none: see `fastDraw`).
 */
function handOver(
  cluster: boolean,
  self = "false",
  inRelease = false,
): string {
  const alive = cluster
    ? `
  local aliveUntil = process and redis.call('hget', KEYS[6], process)
  if process then redis.call('hdel', KEYS[6], process) end
  if aliveUntil and tonumber(aliveUntil) > aliveNow then break end`
    : `
  if process and redis.call('exists', '${ALIVE_PREFIX}' .. process) == 1 then break end`;
  const wake = cluster
    ? `
  redis.pcall('spublish', KEYS[2], process)`
    : `
  if not here then
    local wake = '${WAKE_PREFIX}' .. process
    redis.call('lpush', wake, ticket .. ':' .. string.format('%d', handedToken))
    redis.call('pexpire', wake, ${HAND_OVER_EXPIRE})
    -- A process of the "pubsub" transport hears of it on the channel.
    if string.sub(process, 1, 1) == '${PUBSUB_MARK}' then
      redis.call('publish', wake, '1')
    end
  end`;
  const pop = `
while true do
  entry = redis.call('lpop', KEYS[3])
  if not entry then break end
  process, ticket, px, id = string.match(entry, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')${alive}
end`;
  return `
local entry, process, ticket, px, id
${cluster ? NOW_MS.replaceAll("nowMs", "aliveNow") : ""}${
    inRelease
      ? `
if direct then
  entry = ARGV[7]
  process, ticket, px, id = string.match(entry, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
else${pop}
end`
      : pop
  }
local here = entry and process == ${self}
local handedToken
if entry then
  if not here then
    ${SET_HANDED}
  elseif px == '' then
    redis.call('set', KEYS[1], id)
  else
    redis.call('set', KEYS[1], id, 'PX', px)
  end
  ${
    inRelease
      ? `${fastDraw("(ARGV[5] or '')")}
  handedToken = fastToken
  if not handedToken then
    ${draw(4)}
    handedToken = token
  end`
      : `${draw(4)}
  handedToken = token`
  }${wake}
end
`;
}

/** A statement that leaves the server's clock in ms in the local `nowMs`. */
const NOW_MS = `local nowMs = redis.call('time')
nowMs = tonumber(nowMs[1]) * 1000 + math.floor(tonumber(nowMs[2]) / 1000)`;

/** Statements that set the lock's expiry to ARGV[2] ms ("": none). */
const SET_EXPIRY = `
if ARGV[2] == '' then
  redis.call('persist', KEYS[1])
else
  redis.call('pexpire', KEYS[1], ARGV[2])
end
`;

/**
 * Statements that leave one wake-up in the signal list (python's way: its
 * UNLOCK deletes the list, pushes `1` and sets the expiry). A list that
 * already starts with a wake-up (the previous release's, which nobody
 * waited for) keeps it, with a new expiry: one command fewer in a loop with
 * nobody waiting, and the same for Python, whose waiters pop it at once.
 */
const SIGNAL = `
if redis.call('lindex', KEYS[2], 0) ~= '1' then
  redis.call('del', KEYS[2])
  redis.call('lpush', KEYS[2], 1)
end
redis.call('pexpire', KEYS[2], ARGV[1])
`;

/**
 * Statements that read the racers' turn (KEYS[turn], the signal list at
 * KEYS[signal], the queue at KEYS[queue]) and close a turn that has ended:
 * used if a racer took its wake-up (`2`) from the signal list, unused if it
 * is still there or `ours` (a Lua expression) says this library's waiting
 * connection took it. They leave `turn`: `"open"` (with `turnLeft` ms left),
 * `"q"` (no turn before the key expires), `"u<k>"` (k hand-overs before the
 * next turn), or false (a turn is due).
 */
function turnState(
  turn: number,
  signal: number,
  queue: number,
  ours = "false",
): string {
  return `
local turn, turnLeft = redis.call('get', KEYS[${turn}]), 0
if turn and string.sub(turn, 1, 1) == 'o' then
  local clock = redis.call('time')
  local ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  turnLeft = tonumber(string.sub(turn, 2)) - ms
  if turnLeft > 0 then
    turn = 'open'
  elseif ${ours} or redis.call('lindex', KEYS[${signal}], 0) == '2' then
    redis.call('del', KEYS[${signal}])
    turn = 'q'
    redis.call('set', KEYS[${turn}], turn, 'KEEPTTL')
  else
    turn = 'u' .. redis.call('llen', KEYS[${queue}])
    redis.call('set', KEYS[${turn}], turn, 'PX', ${TURN_MEMORY})
  end
end
`;
}

/**
 * Statements that let the lock go (KEYS: lock, signal, queue, fence, turn):
 * when waiters of this library are queued, to the first alive, unless a
 * racers' turn is due: then the lock is deleted and a wake-up (`2`) left in
 * the signal list for `TURN` ms, during which this library's queued waiters
 * leave it to racers. With nobody alive queued, the lock is deleted with a
 * wake-up in the signal list (python-redis-lock's UNLOCK). They leave
 * `opened` true when a turn opened, and `handedHere` `{ticket, token}` when
 * the lock went to a waiter of `self` (see `handOver`; `inRelease`: in
 * RELEASE, see `handOver`).
 *
 * On a Cluster (KEYS[6]: the lock's liveness hash) there are no racers'
 * turns, and a lock freed with nobody alive queued is announced on the
 * sharded channel named as the signal list, with an empty message.
 *
 * Without `python` (no Python process nor racer on the lock) there are no
 * racers' turns and no wake-up is left in the signal list. With
 * `waitingKnown`, the statements before left `waiting` (whether anyone is
 * queued) in a local.
 */
function letGo(
  cluster = false,
  self = "false",
  python = true,
  waitingKnown = false,
  inRelease = false,
): string {
  if (cluster) {
    return `
local opened = false
local handed = false
if redis.call('llen', KEYS[3]) > 0 then
  ${handOver(true)}
  handed = entry and true or false
end
if not handed then
  ${python ? SIGNAL : ""}
  redis.call('del', KEYS[1])
  redis.pcall('spublish', KEYS[2], '')
end
`;
  }
  return `
local opened = false
${waitingKnown ? "" : "local waiting = redis.call('llen', KEYS[3]) > 0"}
${python ? racersTurn(inRelease) : ""}
local handed, handedHere = false, false
if waiting and not opened then
  ${handOver(false, self, inRelease)}
  handed = entry and true or false
  if here then handedHere = {ticket, handedToken} end
end
if not handed and not opened then
  ${python ? SIGNAL : ""}
  redis.call('del', KEYS[1])
end
`;
}

/**
 * Statements of `letGo` (with `waiting`, `opened` in locals) that open or
 * count down the racers' turn while waiters of this library are queued.
 */
function racersTurn(inRelease: boolean): string {
  return `
if waiting then
  ${turnState(5, 2, 3)}
  if turn == 'open' then
    -- A racer took the lock in its turn and lets it go now.
    redis.call('set', KEYS[5], 'u' .. redis.call('llen', KEYS[3]), 'PX', ${TURN_MEMORY})
  elseif not turn or turn == 'u0' then
    ${
    inRelease
      ? `if direct then
      ${QUEUE_ENTRY}
      direct = false
    end`
      : ""
  }
    local clock = redis.call('time')
    local ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
    redis.call('set', KEYS[5], 'o' .. string.format('%d', ms + ${TURN}), 'PX', ${
    TURN + TURN_QUIET
  })
    redis.call('del', KEYS[2])
    redis.call('lpush', KEYS[2], 2)
    redis.call('pexpire', KEYS[2], ${TURN + TURN_QUIET})
    redis.call('del', KEYS[1])
    opened = true
    -- The head of the queue takes the lock after the turn: one of the
    -- "pubsub" transport hears of the wake-up on its channel.
    local head = redis.call('lindex', KEYS[3], 0)
    if string.sub(head, 1, 1) == '${PUBSUB_MARK}' then
      redis.call('publish', '${WAKE_PREFIX}' .. string.match(head, '^[^|]*'), '2')
    end
  elseif string.sub(turn, 1, 1) == 'u' then
    redis.call('set', KEYS[5], 'u' .. (tonumber(string.sub(turn, 2)) - 1), 'KEEPTTL')
  end
end
`;
}

/**
 * Statements by which an acquire takes the lock set to its process's turn
 * mark (`ARGV[mark]`) as if it were free.
 */
const takeTurn = (mark: number) => `
if ARGV[${mark}] and ARGV[${mark}] ~= '' and owner == ARGV[${mark}] then
  if ARGV[2] == '' then
    redis.call('set', KEYS[1], ARGV[1])
  else
    redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  end
  owner = false
  tookTurn = true
end
`;

/**
 * Statements by which a release gives its process a holder's turn (see
 * `_holder_turns.ts`): when ARGV[4] (the turn's mark) is given (the
 * caller asks only within its tenure), others are queued and no racers'
 * turn is open, the lock is set to the mark for `TURN_LEASE` ms and the
 * script returns 4; or, when the fencing counter is of the epoch the caller
 * knows (ARGV[5]), for ARGV[6] ms (the expiry of the process's next
 * holding) with the token of that holding drawn, which an acquire of the
 * process may take with no command: `{4, token}`.
 * (Without `python`, there are no racers' turns.) They read `waiting`
 * (whether anyone is queued), which `QUEUE_NEXT` leaves.
 */
function giveTurn(python: boolean): string {
  const racersOpen = python
    ? `
  local racers = redis.call('get', KEYS[5])
  if racers and string.sub(racers, 1, 1) == 'o' then
    ${NOW_MS}
    open = tonumber(string.sub(racers, 2)) > nowMs
  end`
    : "";
  return `
if ARGV[4] and ARGV[4] ~= '' and waiting then
  local open = false${racersOpen}
  if not open then
    ${fastDraw("(ARGV[5] or '')")}
    if fastToken then
      redis.call('set', KEYS[1], ARGV[4], 'PX', ARGV[6])
      return {4, fastToken}
    end
    redis.call('set', KEYS[1], ARGV[4], 'PX', ${TURN_LEASE})
    return 4
  end
end
`;
}

/**
 * Statements that queue RELEASE's ARGV[7], an entry of the caller's
 * process ARGV[3]: at the end of the queue, once however often they run,
 * with the process marked alive.
 */
const QUEUE_ENTRY = `
if not redis.call('lpos', KEYS[3], ARGV[7]) then
  redis.call('rpush', KEYS[3], ARGV[7])
end
redis.call('pexpire', KEYS[3], ${QUEUE_TTL})
redis.call('set', '${ALIVE_PREFIX}' .. ARGV[3], 1, 'PX', ${ALIVE_TTL})
`;

/**
 * Statements by which a release takes the next local wait of the caller's
 * waiting process (RELEASE's ARGV[7]) into the queue before it lets the lock
 * go: queued behind anyone queued, it gets the lock in turn; with nobody
 * queued, it is first (`direct`: not pushed, only to be popped at once, and
 * queued if a racers' turn opens instead), and the lock goes to it in the
 * reply, as to any waiter of the releasing process. They leave `waiting`
 * (whether anyone is queued, that entry included) and `direct` in locals.
 */
const QUEUE_NEXT = `
local waiting = redis.call('llen', KEYS[3]) > 0
local direct = false
if ARGV[7] and ARGV[7] ~= '' then
  if waiting then
    ${QUEUE_ENTRY}
  else
    direct = true
  end
  waiting = true
end
`;

/**
 * Marks the caller's process alive (ACQUIRE's ARGV[3] is `<process>|…`).
 */
const MARK_PROCESS_ALIVE =
  `redis.call('set', '${ALIVE_PREFIX}' .. string.match(ARGV[3], '^[^|]*'), 1, 'PX', ${ALIVE_TTL})`;

/** Marks the caller's wait alive in the lock's liveness hash (a Cluster). */
const MARK_WAIT_ALIVE = `${NOW_MS}
  redis.call('hset', KEYS[6], string.match(ARGV[3], '^[^|]*'), nowMs + ${ALIVE_TTL})
  redis.call('pexpire', KEYS[6], ${QUEUE_TTL})`;

/**
 * Statements that set the lock at KEYS[1] to ARGV[1] (with the expiry
 * ARGV[2] ms, "" for none) when it is free; they leave `owner`: false when
 * set, else the holder's id.
 */
const SET_IF_FREE = `
if redis.REDIS_VERSION_NUM then
  -- Redis 7 sets or reads the holder in one command.
  if ARGV[2] == '' then
    owner = redis.call('set', KEYS[1], ARGV[1], 'NX', 'GET')
  else
    owner = redis.call('set', KEYS[1], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
  end
else
  local set
  if ARGV[2] == '' then
    set = redis.call('set', KEYS[1], ARGV[1], 'NX')
  else
    set = redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
  end
  owner = not set and redis.call('get', KEYS[1])
end
`;

/**
 * Statements that end an acquire that found the lock free (`owner` false):
 * they draw the token from the counter at `KEYS[fence]` for a caller that
 * knows the epoch `ARGV[known]` and return it, or `{1, token, epoch}` when
 * it knew none, or `{3, epoch, age}` (lock and counter as they were, a turn
 * it took back at its mark `ARGV[mark]`) when the epoch is another.
 */
function whenFree(fence: number, known: number, mark: number): string {
  return `
if not owner then
  ${fastDraw(`ARGV[${known}]`, fence)}
  if fastToken then return fastToken end
  ${draw(fence)}
  if ARGV[${known}] == '' then
    return {1, token, epoch}
  end
  if ARGV[${known}] ~= epoch then
    if tookTurn then
      -- The turn goes back to its mark, which the caller ends.
      redis.call('set', KEYS[1], ARGV[${mark}], 'PX', ${TURN_LEASE})
    else
      redis.call('del', KEYS[1])
    end
    return {3, epoch, math.floor((now - tonumber(epoch)) / 1000)}
  end
  return token
end
if owner == ARGV[1] then
  return {2}
end
`;
}

/**
 * Statements that end an acquire that found the lock held by another:
 * `{0, pttl}`, with the counter's epoch ("" if none) when the caller knows
 * none (`ARGV[known]` "") from the counter at `KEYS[fence]`.
 */
function whenHeld(fence: number, known: number): string {
  return `
if ARGV[${known}] == '' then
  local fence = redis.call('get', KEYS[${fence}])
  return {0, pttl, fence and string.match(fence, '^(%d+):') or ''}
end
return {0, pttl}
`;
}

/**
 * KEYS: lock, signal, queue, fence, turn. ARGV: id, expire ms ("" for
 * none), `<process>|<ticket>` ("" not to queue), the epoch the caller knows
 * ("" if none), and on one server the caller's turn mark ("" or absent if
 * it has no holder's turn: see `_holder_turns.ts`).
 *
 * Sets the lock when it is free and draws a fencing token. A caller that
 * queues (a waiter of this library) does not pass the queue: it leaves a
 * free lock to racers while their turn is open, and to the first waiter
 * queued alive, and queues. When another id holds the lock and a process is
 * given, queues the entry `<process>|<ticket>|<expire>|<id>` (once, however
 * often this runs) and marks the process alive. Returns:
 * - the token (an integer, the common case made cheap) when acquired;
 * - `{1, token, epoch}` when acquired by a caller that knew no epoch;
 * - `{2}` when this id already holds the lock;
 * - `{0, pttl}` when another id holds it (pttl -1: it never expires; the
 *   time left of a racers' turn), and `{0, pttl, epoch}` for a caller that
 *   knew no epoch ("" if none yet);
 * - `{3, epoch, age ms}` when the counter's epoch is not the one the caller
 *   knows: the lock data was lost since; nothing is changed (a turn's mark
 *   the caller took is put back, for the caller to end).
 *
 * A caller that does not queue sends {@linkcode TRY} instead: the same
 * without the keys and arguments it does not use.
 */
function acquireSource(cluster: boolean): string {
  return `
${EFFECTS}
local owner
local tookTurn = false
local turnLeft = 0
if ARGV[3] ~= '' then
  local turn = redis.call('get', KEYS[5])
  if turn and string.sub(turn, 1, 1) == 'o' then
    local clock = redis.call('time')
    turnLeft = tonumber(string.sub(turn, 2)) - tonumber(clock[1]) * 1000 - math.floor(tonumber(clock[2]) / 1000)
  end
end
if turnLeft > 0 then
  owner = ''
else
  ${SET_IF_FREE}
end
${
    cluster
      ? ""
      : takeTurn(5)
  }if not owner and ARGV[3] ~= '' and redis.call('llen', KEYS[3]) > 0 then
  -- Free, but others queued first: the first of them alive takes it.
  ${handOver(cluster)}
  if entry then owner = id end
end
${whenFree(4, 4, 5)}
if ARGV[3] ~= '' then
  local entry = ARGV[3] .. '|' .. ARGV[2] .. '|' .. ARGV[1]
  if not redis.call('lpos', KEYS[3], entry) then
    redis.call('rpush', KEYS[3], entry)
  end
  redis.call('pexpire', KEYS[3], ${QUEUE_TTL})
  ${cluster ? MARK_WAIT_ALIVE : MARK_PROCESS_ALIVE}
end
local pttl = turnLeft
if turnLeft <= 0 then pttl = redis.call('pttl', KEYS[1]) end
${whenHeld(4, 4)}
`;
}

/**
 * KEYS: lock, fence. ARGV: id, expire ms ("" for none), the epoch the
 * caller knows ("" if none), and the caller's turn mark ("" or absent if it
 * has no holder's turn).
 *
 * ACQUIRE for a caller that does not queue (a try, on one server or a
 * Cluster): sets the lock when it is free, or takes it from the caller's
 * turn mark, and draws a fencing token. Replies as ACQUIRE. Two keys and
 * three or four arguments rather than five and five: beyond the commands,
 * an uncontended acquire's cost is mostly the bytes of its keys and
 * arguments.
 */
export const TRY = `
${EFFECTS}
local owner
local tookTurn = false
${SET_IF_FREE}
${takeTurn(4)}
${whenFree(2, 3, 4)}
local pttl = redis.call('pttl', KEYS[1])
${whenHeld(2, 3)}
`;

/** ACQUIRE on one server. */
export const ACQUIRE: string = acquireSource(false);

/**
 * ACQUIRE on a Cluster, with KEYS[6], the lock's liveness hash: a queued
 * wait is alive while its field (its process) holds a time to come.
 */
export const C_ACQUIRE: string = acquireSource(true);

/**
 * KEYS: lock, signal, queue, fence, turn (and the liveness hash on a
 * Cluster). ARGV: signal expiry, id, and on one server the caller's waiting
 * process ("" or absent if none), and when it asks for a holder's turn
 * (else "" or absent) the turn's mark, the epoch the caller knows and the
 * expiry in ms of the process's next holding, and the entry of the waiting
 * process's next local wait, to queue first (else "" or absent: see
 * `QUEUE_NEXT`).
 * If this id holds the lock, lets it go: to the caller's process for a
 * holder's turn, to the first queued waiter alive, to racers for their
 * turn, or else deletes it and leaves one wake-up in the signal list
 * (python-redis-lock's UNLOCK). Returns 0 when released, 2 when released
 * for a racers' turn, 4 when kept for a holder's turn, `{4, token}` when
 * kept for a holder's turn with the next holding's token drawn, 1 when this
 * id does not hold the lock, `{3, ticket, token}` when handed to a waiter
 * of the caller's process (with the waiter's own expiry; no wake-up
 * pushed).
 */
function releaseSource(cluster: boolean, python = true): string {
  return `
${EFFECTS}
if redis.call('get', KEYS[1]) ~= ARGV[2] then
  return 1
end
${
    cluster ? letGo(true, "false", python) : QUEUE_NEXT + giveTurn(python) +
      letGo(false, "ARGV[3]", python, true, true)
  }
${
    cluster
      ? ""
      : "if handedHere then return {3, handedHere[1], handedHere[2]} end"
  }
if opened then return 2 end
return 0
`;
}

/** RELEASE on one server. */
export const RELEASE: string = releaseSource(false);

/** RELEASE on a Cluster. */
export const C_RELEASE: string = releaseSource(true);

/** RELEASE for `pythonPeers: false`: no wake-up for Python, no racers. */
export const RELEASE_ALONE: string = releaseSource(false, false);

/** RELEASE on a Cluster for `pythonPeers: false`. */
export const C_RELEASE_ALONE: string = releaseSource(true, false);

/**
 * KEYS: lock. ARGV: id, expire ms.
 * Sets the remaining life to exactly `expire`. Returns 0 when extended, 1
 * when this id does not hold the lock, 2 when the lock has no expiry to
 * extend (python-redis-lock's EXTEND).
 */
export const EXTEND = `
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return 1
end
if redis.call('pttl', KEYS[1]) < 0 then
  return 2
end
redis.call('pexpire', KEYS[1], ARGV[2])
return 0
`;

/**
 * KEYS: lock. ARGV: id, expire ms ("" for none).
 * Sets the expiry of a lock this id holds to exactly `expire`: how a holder
 * that was handed the lock (with a short expiry) takes its own. Returns 0
 * when set, 1 when this id does not hold the lock.
 */
export const KEEP = `
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return 1
end
${SET_EXPIRY}
return 0
`;

/**
 * KEYS: lock. ARGV: id, expire ms.
 * Auto-renewal: lengthens the remaining life of a lock this id holds to
 * `expire`, never shortening a longer one (set by an explicit extend).
 * Returns 0 when held, 1 when this id does not hold the lock.
 */
export const RENEW = `
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return 1
end
local pttl = redis.call('pttl', KEYS[1])
if pttl >= 0 and pttl < tonumber(ARGV[2]) then
  redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
`;

/**
 * KEYS: lock, fence. ARGV: id, expire ms ("" for none).
 * A waiter that finds the lock handed to it without having heard of the
 * hand-over (the wake-up was lost with a connection) takes it: sets its own
 * expiry and draws a fresh token. Returns `{0, token}`, or `{1}` when this
 * id does not hold the lock.
 */
export const CLAIM = `
${EFFECTS}
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return {1}
end
${SET_EXPIRY}
${draw(2)}
return {0, token}
`;

/**
 * KEYS: lock, signal, queue, fence, turn (and the liveness hash on a
 * Cluster). ARGV: signal expiry, the holder's id the caller read ("" for
 * none).
 * If that is still the holder (or the lock is still free), deletes the lock
 * and lets it go as a release does (python-redis-lock's RESET). Returns
 * `{1}` when a lock was deleted, `{0}` when there was none, `{2}` when the
 * holder is no longer the one read.
 */
function resetSource(cluster: boolean, python = true): string {
  return `
${EFFECTS}
local holder = redis.call('get', KEYS[1])
if (holder or '') ~= ARGV[2] then
  return {2}
end
${letGo(cluster, "false", python)}
if holder then return {1} end
return {0}
`;
}

/** RESET on one server. */
export const RESET: string = resetSource(false);

/** RESET on a Cluster. */
export const C_RESET: string = resetSource(true);

/** RESET for `pythonPeers: false`. */
export const RESET_ALONE: string = resetSource(false, false);

/** RESET on a Cluster for `pythonPeers: false`. */
export const C_RESET_ALONE: string = resetSource(true, false);

/**
 * KEYS: lock, signal, queue, fence, turn. ARGV: signal expiry, process of
 * the caller ("" if none), up to two entries the caller may have queued (""
 * if none), the wake-up the caller took from the signal list ("" if none:
 * "1" python's, "2" a racers' turn's).
 * Looks at the lock for a waiting process: when it is free, lets it go (to
 * the first queued waiter alive, or leaves python's wake-up), unless a
 * racers' turn is open: then a wake-up the caller took is put back. When one
 * of the caller's entries is queued, keeps the queue and the caller alive in
 * Redis. Returns `{state, pttl, queued, owner}`: state 0 held (pttl of the
 * holder, -1 if none), 1 handed over, 2 free with nobody alive queued, 3
 * free for racers (pttl: the turn's time left); queued 1 or 2 when that
 * entry is in the queue, else 0; owner the holder's id or false.
 */
export const INSPECT = `
${EFFECTS}
local state, pttl = 0, -2
${turnState(5, 2, 3, "ARGV[5] == '2'")}
if redis.call('exists', KEYS[1]) == 1 then
  pttl = redis.call('pttl', KEYS[1])
elseif turn == 'open' then
  state, pttl = 3, turnLeft
  if ARGV[5] ~= '' then
    redis.call('lpush', KEYS[2], ARGV[5])
    redis.call('pexpire', KEYS[2], ${TURN + TURN_QUIET})
  end
else
  ${handOver(false)}
  if entry then
    state = 1
  else
    state = 2
    ${SIGNAL}
  end
end
local queued = 0
if ARGV[3] ~= '' and redis.call('lpos', KEYS[3], ARGV[3]) then
  queued = 1
elseif ARGV[4] ~= '' and redis.call('lpos', KEYS[3], ARGV[4]) then
  queued = 2
end
if queued > 0 then
  redis.call('pexpire', KEYS[3], ${QUEUE_TTL})
  redis.call('set', '${ALIVE_PREFIX}' .. ARGV[2], 1, 'PX', ${ALIVE_TTL})
end
return {state, pttl, queued, redis.call('get', KEYS[1])}
`;

/**
 * KEYS: lock, signal, queue, fence, turn. ARGV: signal expiry, entry of the
 * waiter giving up ("" if not queued), entry of the next waiter of the same
 * process ("" if none), id of the waiter giving up.
 * Takes a waiter out of the queue (every copy of its entry), leaving its
 * place to the next waiter of its process. If the lock was already handed
 * to it, passes the lock on: to that next waiter, or lets it go.
 * Returns `{0}` when taken out of the queue, `{1}` when the lock was let
 * go, `{2}` when neither (nothing of the waiter was left), `{3, token}` when
 * the lock was handed to the next waiter.
 */
export const CANCEL = `
${EFFECTS}
if ARGV[2] ~= '' then
  if ARGV[3] ~= '' and redis.call('lpos', KEYS[3], ARGV[3]) then
    -- Already done by a run whose reply was lost.
    redis.call('lrem', KEYS[3], 0, ARGV[2])
    return {0}
  end
  local position = redis.call('lpos', KEYS[3], ARGV[2])
  if position then
    if ARGV[3] ~= '' then
      redis.call('lset', KEYS[3], position, ARGV[3])
    end
    redis.call('lrem', KEYS[3], 0, ARGV[2])
    return {0}
  end
end
if redis.call('get', KEYS[1]) ~= ARGV[4] then
  return {2}
end
if ARGV[3] ~= '' then
  local process, ticket, px, id = string.match(ARGV[3], '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
  ${SET_FOR_ENTRY}
  return {3, token}
end
${letGo()}
return {1}
`;

/**
 * KEYS: lock, signal, queue, fence, turn, liveness hash (a Cluster). ARGV:
 * signal expiry, id, the entry the wait may have queued.
 * A wait on a Cluster that gives up: takes its entry out of the queue and
 * its field out of the liveness hash, and, if the lock was handed to it,
 * passes the lock on. Returns 1 when it passed the lock on, else 0.
 */
export const C_CANCEL = `
${EFFECTS}
redis.call('lrem', KEYS[3], 0, ARGV[3])
redis.call('hdel', KEYS[6], string.match(ARGV[3], '^[^|]*'))
if redis.call('get', KEYS[1]) ~= ARGV[2] then
  return 0
end
${letGo(true)}
return 1
`;

/**
 * KEYS: the process's wake list. ARGV: the interrupt value, expiry ms.
 * Pushes the value that interrupts the process's `BLPOP`, and gives the
 * list an expiry in the same step (a wake list never stays for ever).
 */
export const INTERRUPT = `
redis.call('lpush', KEYS[1], ARGV[1])
redis.call('pexpire', KEYS[1], ARGV[2])
`;

/**
 * What a poll does in place of a `BLPOP` that would not block: pops the
 * first value of the first non-empty list, in the order of `KEYS` (the
 * process's wake list, then the signal lists it covers), as `BLPOP` picks
 * one. Replies `{key, value}`, or nil when every list is empty.
 */
export const POLL = `
for i = 1, #KEYS do
  local value = redis.call('lpop', KEYS[i])
  if value then return {KEYS[i], value} end
end
return false
`;

/**
 * Redlock, on one master. KEYS: lock, fence, start. ARGV: id, expire (ms),
 * the longest expiry any lock of these masters may have (ms).
 * Sets the lock for `id` unless another id holds it, and draws a fencing
 * token. A master whose start is unknown (its data is new) answers `{-1}`
 * and sets nothing: the caller learns the uptime and runs R_START. A
 * master that started less than the longest expiry ago abstains (a holder
 * that counted it before it lost its data may still believe): `{-2, ms
 * left}`.
 * Replies `{1, token}`, or `{0, pttl, holder}` when held by another id. Run
 * twice (a re-sent command), it grants the same id again.
 */
export const R_ACQUIRE = `
${EFFECTS}
local started = redis.call('get', KEYS[3])
if not started then return {-1} end
local clock = redis.call('time')
local ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local wait = tonumber(started) + tonumber(ARGV[3]) - ms
if wait > 0 then return {-2, wait} end
local holder = redis.call('get', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {0, redis.call('pttl', KEYS[1]), holder}
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
${draw(2)}
return {1, string.format('%d', token)}
`;

/**
 * KEYS: start. ARGV: the server's uptime in ms. Records when the server
 * started, unless someone did.
 */
export const R_START = `
${EFFECTS}
if redis.call('exists', KEYS[1]) == 1 then return 0 end
local clock = redis.call('time')
local ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('set', KEYS[1], string.format('%d', ms - tonumber(ARGV[1])))
return 1
`;

/**
 * KEYS: fence. ARGV: token. Raises the counter to the token a Redlock
 * acquisition took (the highest of its quorum), so that any later quorum,
 * which shares a master with this one, draws a higher one.
 */
export const R_RAISE = `
local fence = redis.call('get', KEYS[1])
local epoch, last
if fence then epoch, last = string.match(fence, '^(%d+):(%d+)$') end
if not epoch then epoch, last = ARGV[1], 0 end
if tonumber(last) < tonumber(ARGV[1]) then
  redis.call('set', KEYS[1], epoch .. ':' .. ARGV[1])
end
return 1
`;

/** KEYS: lock. ARGV: id, expire (ms). Sets the expiry if `id` holds it: 1, else 0. */
export const R_EXTEND = `
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
`;

/**
 * KEYS: lock, signal. ARGV: signal expiry, id, `quiet` ("1": no wake-up).
 * Deletes the lock if `id` holds it and, unless quiet, leaves
 * python-redis-lock's wake-up: 1, else 0. A failed attempt lets go quietly:
 * the lock was never held, and waking the waiters (itself among them)
 * would make them retry at once, again and again.
 */
export const R_RELEASE = `
if redis.call('get', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('del', KEYS[1])
if ARGV[3] ~= '1' then
  ${SIGNAL}
end
return 1
`;

/** Anything that sends a command: a client's connection, or one of ours. */
export interface Sender {
  send(command: string, args: readonly string[]): Promise<Reply>;
}

async function sha1(source: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-1",
    new TextEncoder().encode(source),
  );
  return Array.from(
    new Uint8Array(digest),
    (byte) => byte.toString(16).padStart(2, "0"),
  ).join("");
}

function isNoScript(error: unknown): boolean {
  return error instanceof Error && error.message.includes("NOSCRIPT");
}

/**
 * A script sent as `EVALSHA`, falling back to `EVAL` when the server does not
 * know it yet (a new server, or after `SCRIPT FLUSH`).
 */
export class Script {
  readonly source: string;
  readonly #keysOf: (keys: LockKeys) => readonly string[];
  #sha: string | undefined;
  #shaPromise: Promise<string> | undefined;

  /**
   * @param source The Lua source.
   * @param keysOf Which of a lock's keys the script takes, in order.
   */
  constructor(
    source: string,
    keysOf: (keys: LockKeys) => readonly string[],
  ) {
    this.source = source;
    this.#keysOf = keysOf;
  }

  /** The SHA-1 of the source, as `EVALSHA` wants it. */
  sha(): Promise<string> {
    return this.#shaPromise ??= sha1(this.source).then((sha) =>
      this.#sha = sha
    );
  }

  /** Runs the script on a lock's keys with the script's own arguments. */
  call(
    connection: Sender,
    keys: LockKeys,
    args: readonly string[],
  ): Promise<Reply> {
    return this.run(connection, this.#keysOf(keys), args);
  }

  /**
   * Runs a script that may hand the lock over: the signal expiry, then
   * `args`.
   */
  handOver(
    connection: Sender,
    keys: LockKeys,
    signalExpire: number,
    args: readonly string[],
  ): Promise<Reply> {
    return this.run(connection, this.#keysOf(keys), [
      String(signalExpire),
      ...args,
    ]);
  }

  /**
   * Runs the script with its keys and arguments. On `NOSCRIPT` the source
   * is sent, unless `gaveUp()` says the caller has given up on the reply (a
   * script sent after the caller cleaned up would undo the clean-up).
   */
  run(
    connection: Sender,
    keys: readonly string[],
    args: readonly string[],
    gaveUp?: () => boolean,
  ): Promise<Reply> {
    if (this.#sha === undefined) {
      return this.sha().then(() => this.run(connection, keys, args, gaveUp));
    }
    const params = [this.#sha, String(keys.length), ...keys, ...args];
    return connection.send("EVALSHA", params).catch((error) => {
      if (!isNoScript(error) || gaveUp?.()) throw error;
      params[0] = this.source;
      return connection.send("EVAL", params);
    });
  }
}
