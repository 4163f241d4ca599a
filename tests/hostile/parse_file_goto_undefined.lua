-- expect: syntax=no visible label
-- why: goto into a label that is not visible (jumping into a nested block) must be a compile error
goto inside
do ::inside:: end
