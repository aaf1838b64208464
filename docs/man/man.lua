-- SPDX-License-Identifier: MIT
-- man.lua: a pandoc filter for the man pages (mkman.py runs it).
--
-- Tables become tagged paragraphs, one per row: the row's first cell is the tag, and the other
-- cells follow as "header: text", joined by semicolons (a two-column table gives just the
-- text; empty cells and cells holding only a dash are left out). The tables in
-- docs/PROTOCOL.md and in the pages have up to six columns of prose, which tbl cannot fit in a
-- terminal's 80 columns without broken lines and warnings; a man page lists such things as
-- tagged paragraphs anyway.

local function cell_inlines(cell)
  local out = pandoc.List()
  for i, block in ipairs(cell.contents) do
    if i > 1 then out:insert(pandoc.Space()) end
    if block.content then out:extend(block.content) end
  end
  return out
end

function Table(t)
  local headers = {}
  if #t.head.rows > 0 then
    for i, c in ipairs(t.head.rows[1].cells) do
      headers[i] = pandoc.utils.stringify(c.contents)
    end
  end
  local items = pandoc.List()
  for _, body in ipairs(t.bodies) do
    for _, row in ipairs(body.body) do
      local term = cell_inlines(row.cells[1])
      local lines = pandoc.List()
      for j = 2, #row.cells do
        local text = cell_inlines(row.cells[j])
        local plain = pandoc.utils.stringify(text)
        if plain ~= "" and plain ~= "—" and plain ~= "-" then
          if #lines > 0 then
            lines:insert(pandoc.Str(";"))
            lines:insert(pandoc.Space())
          end
          if #row.cells > 2 and headers[j] and headers[j] ~= "" then
            lines:insert(pandoc.Str(headers[j] .. ":"))
            lines:insert(pandoc.Space())
          end
          lines:extend(text)
        end
      end
      if #lines == 0 then lines:insert(pandoc.Str("(no details)")) end
      items:insert({term, {pandoc.Plain(lines)}})
    end
  end
  return pandoc.DefinitionList(items)
end
